"""Champion and challengers: the promotion rule, and the set of models trained as one (in-process, no broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from aiokafka import AIOKafkaProducer

from stream_learner.config import Settings
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import build_model
from stream_learner.learning.model_set import ModelSet, member_settings
from stream_learner.learning.promotion import Contest
from stream_learner.learning.trainer import Trainer
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .service_process import checkpoint_show
from .stream_io import produce_events, produce_labels, read_predictions
from .test_crash_safety import wait_until_joined

CPU = torch.device("cpu")


def right(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores for ``n`` examples of class 1 that predict class 1."""
    return np.tile([[0.2, 0.8]], (n, 1)).astype(np.float32), np.ones(n)


def wrong(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile([[0.8, 0.2]], (n, 1)).astype(np.float32), np.ones(n)


def mixed(n: int, errors: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores with ``errors`` wrong among ``n``."""
    scores = np.tile([[0.2, 0.8]], (n, 1)).astype(np.float32)
    scores[:errors] = [0.8, 0.2]
    return scores, np.ones(n)


def play(
    contest: Contest, steps: int, per_model: dict[str, tuple[np.ndarray, np.ndarray]], size: int = 10
) -> list[str]:
    """``steps`` steps of ``size`` examples each model scores as given; the promoted models in order."""
    promoted = []
    for _ in range(steps):
        labels = next(iter(per_model.values()))[1][:size]
        contest.score([scores[:size] for scores, _ in per_model.values()], labels)
        promotion = contest.after_step(size)
        if promotion is not None:
            promoted.append(promotion.model)
    return promoted


def test_a_better_challenger_is_promoted_once_every_window_is_full() -> None:
    contest = Contest(["default", "fast"], "classification", window=100, margin=0.1)
    assert play(contest, 9, {"default": mixed(10, 5), "fast": right(10)}) == [], "99 examples: the window is not full"
    assert play(contest, 1, {"default": mixed(10, 5), "fast": right(10)}) == ["fast"]
    assert contest.champion == "fast" and contest.promotions == 1


def test_a_challenger_within_the_margin_is_not_promoted() -> None:
    contest = Contest(["default", "close"], "classification", window=100, margin=0.1)
    assert play(contest, 50, {"default": mixed(10, 5), "close": mixed(10, 5)}) == []
    contest = Contest(["default", "close"], "classification", window=100, margin=0.3)
    assert play(contest, 50, {"default": mixed(10, 4), "close": mixed(10, 3)}) == [], "error 0.3 is not 30% below 0.4"
    contest = Contest(["default", "better"], "classification", window=100, margin=0.2)
    assert play(contest, 10, {"default": mixed(10, 4), "better": mixed(10, 3)}) == ["better"], "0.3 is 25% below 0.4"


def test_after_a_promotion_the_next_waits_a_whole_window() -> None:
    contest = Contest(["default", "a", "b"], "classification", window=100, margin=0.1)
    assert play(contest, 10, {"default": wrong(10), "a": mixed(10, 5), "b": mixed(10, 8)}) == ["a"]
    flipped = {"default": wrong(10), "a": wrong(10), "b": right(10)}
    assert play(contest, 9, flipped) == [], "fewer than a window since the promotion"
    assert play(contest, 1, flipped) == ["b"]


def test_regression_is_judged_by_the_mae() -> None:
    contest = Contest(["default", "near"], "regression", window=20, margin=0.1)
    labels = np.full(10, 40.0)
    far, near = (np.full((10, 1), 40.0 + d, np.float32) for d in (3.0, 1.0))
    assert play(contest, 2, {"default": (far, labels), "near": (near, labels)}) == ["near"]
    assert contest.errors() == {"default": pytest.approx(3.0), "near": pytest.approx(1.0)}


def test_the_contest_state_restores_onto_a_changed_set_of_models() -> None:
    contest = Contest(["default", "a", "gone"], "classification", window=100, margin=0.1)
    play(contest, 10, {"default": wrong(10), "a": right(10), "gone": mixed(10, 5)})
    state = contest.state_dict()

    same = Contest(["default", "a", "gone"], "classification", window=100, margin=0.1)
    same.load_state_dict(state)
    assert (same.champion, same.promotions, same.errors()) == (contest.champion, 1, contest.errors())

    changed = Contest(["default", "new", "a"], "classification", window=100, margin=0.1)
    changed.load_state_dict(state)
    assert changed.champion == "a" and changed.errors() == {"default": 1.0, "new": None, "a": 0.0}
    without_champion = Contest(["default", "gone"], "classification", window=100, margin=0.1)
    without_champion.load_state_dict(state)
    assert without_champion.champion == "default"


def settings(**extra: object) -> Settings:
    return Settings(input_dim=4, **extra)  # type: ignore[arg-type]


def stream(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(np.float64)


def train(models: ModelSet | Trainer, x: np.ndarray, y: np.ndarray, batch: int = 32) -> None:
    for start in range(0, len(y), batch):
        xb, yb = x[start : start + batch], y[start : start + batch]
        models.learn_many(Examples(xb, yb, models.predict_many(xb)))


def test_every_model_learns_the_same_examples_and_scores_them_before_it_does() -> None:
    models = ModelSet(settings(challengers="learning_rates"), CPU)
    x, y = stream(640)
    train(models, x, y)
    figures = models.stats()["models"]
    assert list(figures) == ["default", "learning_rate_factor=0.2", "learning_rate_factor=5.0"]
    assert {f["examples_trained"] for f in figures.values()} == {640}
    assert {f["scored"] for f in figures.values()} == {640}
    rates = [t.optimizer.param_groups[0]["lr"] for t in models.members.values()]
    assert rates == pytest.approx([0.05, 0.01, 0.25])
    weights = [t.weights()["net.weight"] for t in models.members.values()]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_the_default_model_alone_trains_as_it_would_without_challengers() -> None:
    alone = Trainer(build_model(settings()), settings(), CPU)
    models = ModelSet(settings(challengers='[{"model": "mlp"}]'), CPU)
    x, y = stream(320)
    train(alone, x, y)
    train(models, x, y)
    for name, weight in alone.weights().items():
        assert torch.equal(models.members["default"].weights()[name], weight), name


def test_a_far_better_challenger_takes_over_serving() -> None:
    s = settings(learning_rate=1e-6, challengers='[{"learning_rate": 0.05, "name": "tuned"}]', promotion_window=200)
    models = ModelSet(s, CPU)
    x, y = stream(1000)
    train(models, x, y)
    assert models.serving == "tuned" and models.contest.promotions == 1
    test_x, test_y = stream(2000, seed=1)
    served = models.predict_many(test_x)
    assert np.array_equal(served, models.members["tuned"].predict_many(test_x))
    assert (served.argmax(axis=1) == test_y).mean() > 0.9
    assert models.model_version == models.members["tuned"].model_version


def test_average_serves_the_mean_of_every_model_and_promotes_none() -> None:
    s = settings(learning_rate=1e-6, challengers='[{"learning_rate": 0.05}]', selection="average", promotion_window=200)
    models = ModelSet(s, CPU)
    x, y = stream(1000)
    train(models, x, y)
    assert models.serving == "average" and models.contest.promotions == 0
    test_x, _ = stream(50, seed=1)
    each = [t.predict_many(test_x) for t in models.members.values()]
    assert np.allclose(models.predict_many(test_x), (each[0] + each[1]) / 2, atol=1e-6)


def test_the_whole_set_is_in_the_state_and_a_restore_predicts_the_same() -> None:
    s = settings(learning_rate=1e-6, challengers='[{"learning_rate": 0.05, "name": "tuned"}]', promotion_window=200)
    models = ModelSet(s, CPU)
    x, y = stream(1000)
    train(models, x, y)
    restored = ModelSet(s, CPU)
    restored.load_state_dict(models.state_dict())
    assert restored.serving == "tuned" and restored.stats() == models.stats()
    more_x, more_y = stream(320, seed=2)
    train(models, more_x, more_y)
    train(restored, more_x, more_y)
    test_x, _ = stream(100, seed=3)
    for name, trainer in models.members.items():
        assert np.array_equal(restored.members[name].predict_many(test_x), trainer.predict_many(test_x)), name


def test_a_restart_with_other_challengers_keeps_the_ones_still_named() -> None:
    before = ModelSet(
        settings(challengers='[{"name": "a", "learning_rate": 0.01}, {"name": "b", "model": "mlp"}]'), CPU
    )
    x, y = stream(320)
    train(before, x, y)
    state = before.state_dict()
    after = ModelSet(
        settings(challengers='[{"name": "c", "optimizer": "sgd"}, {"name": "a", "learning_rate": 0.01}]'), CPU
    )
    after.load_state_dict(state)
    assert after.members["a"].counters.examples_trained == 320 and after.members["c"].counters.examples_trained == 0
    assert torch.equal(after.members["a"].weights()["net.weight"], before.members["a"].weights()["net.weight"])
    plain = Trainer(build_model(settings()), settings(), CPU)
    plain.load_state_dict(state)
    assert torch.equal(plain.weights()["net.weight"], before.members["default"].weights()["net.weight"])
    grown = ModelSet(settings(challengers='[{"name": "a", "learning_rate": 0.01}]'), CPU)
    grown.load_state_dict(plain.state_dict())
    assert (
        grown.members["default"].counters.examples_trained == 320 and grown.members["a"].counters.examples_trained == 0
    )


def test_a_challengers_settings_are_the_defaults_with_its_own() -> None:
    s = settings(optimizer="sgd", hidden_dim=8, challengers='[{"model": "mlp", "learning_rate_factor": 0.5}]')
    member = member_settings(s, s.challengers[0])
    assert (member.model, member.optimizer, member.hidden_dim, member.challengers) == ("mlp", "sgd", 8, [])
    assert member.effective_learning_rate == pytest.approx(0.5 * 0.05), "half the mlp's tuned sgd rate"


@pytest.mark.integration
async def test_through_kafka_a_better_challenger_is_promoted_and_its_predictions_say_so(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    """Live: a default model that barely learns, a tuned challenger; labels 50 events late."""
    total = 2000
    tuned = '[{"learning_rate": 0.05, "name": "tuned"}]'
    service = start_service(learning_rate=1e-5, challengers=tuned, promotion_window=200)
    service.wait_for_log("service_started", timeout=60)
    stream = DriftingStream(INPUT_DIM, seed=5)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=2)
    await producer.start()
    try:
        for start in range(0, total + 50, 50):
            if start < total:
                await produce_events(producer, topics.events, stream.batch(start, 50))
            if start >= 50:
                done = stream.batch(start - 50, 50)
                await produce_labels(producer, topics.labels, done.ids, done.labels)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
    await wait_until_joined(service, total)
    assert service.stop() == 0

    promoted = [e for e in service.log_events() if e.get("event") == "model_promoted"]
    assert [(e["model"], e["replaced"]) for e in promoted] == [("tuned", "default")], promoted
    shown = checkpoint_show(tmp_path / "checkpoints")
    assert (shown["serving_model"], shown["promotions"]) == ("tuned", 1)
    assert {m["examples_trained"] for m in shown["models"].values()} == {total}, shown["models"]
    predictions = await read_predictions(kafka_broker.bootstrap_servers, topics.predictions, expected=total, timeout=30)
    served = [predictions[event_id][0]["model"] for event_id in stream.batch(0, total).ids]
    assert set(served[:100]) == {"default"} and set(served[-300:]) == {"tuned"}
