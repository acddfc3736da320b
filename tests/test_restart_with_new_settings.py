"""Restarts with changed optimizer settings over the same checkpoints: the settings win, the change is
logged, and the service goes on predicting every event and training every label once.
The restore itself in this process; then against a real broker, the service as a real child process."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import structlog
import torch

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.learning.join import Examples
from stream_learner.service import Service
from .cuts import restore_state, snapshot_state
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .observe import read_to_end, wait_for_progress
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import produce_slice

STREAM = DriftingStream(INPUT_DIM, seed=5, drift_at=None)
BATCH = 400
FAST = {"session_timeout_ms": 6000, "log_interval_s": 0.2}
RUNS: list[tuple[dict[str, object], list[dict[str, Any]]]] = [
    ({}, []),  # adam, the linear model's tuned learning rate 0.05, no weight decay
    ({"learning_rate": 0.02}, [{"event": "optimizer_setting_changed", "setting": "learning_rate", "old": 0.05, "new": 0.02}]),
    (
        {"learning_rate": 0.02, "weight_decay": 0.01},
        [{"event": "optimizer_setting_changed", "setting": "weight_decay", "old": 0.0, "new": 0.01}],
    ),
    (
        {"learning_rate": 0.02, "weight_decay": 0.01, "optimizer": "sgd"},
        [{"event": "optimizer_changed", "old": "adam", "new": "sgd", "model_weights": "kept", "optimizer_state": "reset"}],
    ),
]


# --- the restore, in this process -----------------------------------------------------------------


def service(directory: Path, **settings: object) -> Service:
    return Service(Settings(input_dim=INPUT_DIM, checkpoint_dir=directory, metrics_port=0, **settings))  # type: ignore[arg-type]


def examples(start: int, n: int = 32) -> Examples:
    batch = STREAM.batch(start, n)
    return Examples(batch.features, batch.labels.astype(np.float64), np.zeros((n, 2), np.float32))


def trained_snapshot(directory: Path, **settings: object) -> dict[str, Any]:
    old = service(directory, **settings)
    for start in range(0, 96, 32):
        old.learner.trainer.learn_many(examples(start))
    return snapshot_state(old)


@pytest.mark.usefixtures("clean_settings_sources")
@pytest.mark.parametrize("recorded", [True, False], ids=["spec-recorded", "written-before-specs"])
@pytest.mark.parametrize(
    ("settings", "logged"),
    [
        ({}, []),
        ({"learning_rate": 0.5}, [("optimizer_setting_changed", "learning_rate", 0.05, 0.5)]),
        ({"weight_decay": 0.1}, [("optimizer_setting_changed", "weight_decay", 0.0, 0.1)]),
        (
            {"learning_rate": 0.5, "weight_decay": 0.1},
            [("optimizer_setting_changed", "learning_rate", 0.05, 0.5), ("optimizer_setting_changed", "weight_decay", 0.0, 0.1)],
        ),
        ({"optimizer": "sgd", "learning_rate": 0.5}, [("optimizer_changed", None, "adam", "sgd")]),
    ],
    ids=["same", "learning-rate", "weight-decay", "both", "adam-to-sgd"],
)
def test_a_restore_under_other_optimizer_settings_takes_them_and_logs_each_change(
    tmp_path: Path, recorded: bool, settings: dict[str, object], logged: list[tuple[object, ...]]
) -> None:
    state = trained_snapshot(tmp_path)
    if not recorded:
        del state["trainer"]["optimizer_spec"]
    new = service(tmp_path, **settings)
    with structlog.testing.capture_logs() as logs:
        restore_state(new, state)
    assert [(e["event"], e.get("setting"), e["old"], e["new"]) for e in logs] == logged
    assert all(e["log_level"] == "warning" for e in logs)
    assert all(torch.equal(v, state["trainer"]["model"][k]) for k, v in new.learner.trainer.model.state_dict().items())
    group = new.learner.trainer.optimizer.param_groups[0]
    assert (type(new.learner.trainer.optimizer).__name__.lower(), group["lr"], group["weight_decay"]) == (
        new.settings.optimizer, new.settings.effective_learning_rate, new.settings.weight_decay,
    )  # fmt: skip
    assert math.isfinite(new.learner.trainer.learn_many(examples(96)))
    assert snapshot_state(new)["trainer"]["optimizer_spec"]["kind"] == new.settings.optimizer


# --- restarts of the service, against a real broker ------------------------------------------------


async def produce(bootstrap: str, topics: TestTopics, start: int, n: int) -> None:
    await produce_slice(bootstrap, topics, STREAM, start, n)


def optimizer_warnings(service: ServiceProcess) -> list[dict[str, Any]]:
    keys = ("event", "setting", "old", "new", "model_weights", "optimizer_state")
    found = [e for e in service.log_events() if e.get("event") in ("optimizer_changed", "optimizer_setting_changed")]
    assert all(e["level"] == "warning" for e in found), found
    return [{k: e[k] for k in keys if k in e} for e in found]


@pytest.mark.integration
async def test_restarts_with_a_new_learning_rate_weight_decay_and_optimizer_keep_training_every_label_once(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints = kafka_broker.bootstrap_servers, tmp_path / "checkpoints"
    for run, (settings, expected_warnings) in enumerate(RUNS):
        total = (run + 1) * BATCH
        await produce(bootstrap, topics, run * BATCH, BATCH)
        service = start_service(**FAST, **settings)
        await wait_for_progress(
            service,
            lambda p: p["events_predicted"] == total and p["labels_joined"] == total and p["queued_examples"] == 0,
            f"run {run}: every event predicted and every label trained",
        )
        assert service.alive(), service.log_tail()
        assert service.stop() == 0, service.log_tail()
        assert optimizer_warnings(service) == expected_warnings, service.log_tail()

        shown = checkpoint_show(checkpoints)
        assert shown["events_predicted"] == total and shown["dead_lettered"] == 0, shown
        assert shown["labels_joined"] == shown["examples_trained"] == total, shown
        assert shown["examples_skipped"] == 0 and shown["skipped_steps"] == 0, shown
        trainer = CheckpointStore(checkpoints, keep=1).load_latest().state["trainer"]  # type: ignore[union-attr]
        spec = {"kind": "adam", "learning_rate": 0.05, "weight_decay": 0.0}
        spec.update({"kind" if k == "optimizer" else k: v for k, v in settings.items()})  # type: ignore[misc]
        assert trainer["optimizer_spec"] == spec
        group = trainer["optimizer"]["param_groups"][0]
        assert (group["lr"], group["weight_decay"]) == (spec["learning_rate"], spec["weight_decay"])
        assert ("momentum" in group) == (spec["kind"] == "sgd")

    predictions = Counter(orjson.loads(r.value)["id"] for r in await read_to_end(bootstrap, topics.predictions))
    assert len(predictions) == len(RUNS) * BATCH and set(predictions.values()) == {1}, "every event predicted once"
    assert set(predictions) == set(STREAM.batch(0, len(RUNS) * BATCH).ids)


CHALLENGER_RUNS: list[tuple[str, dict[str, int], list[tuple[str, str]]]] = [
    # CHALLENGERS, then examples each model has trained after the run, then the warnings of the restore
    ("", {"default": BATCH}, []),
    ('[{"name": "a", "learning_rate": 0.01}]', {"default": 2 * BATCH, "a": BATCH}, [("challenger_added", "a")]),
    ('[{"name": "b", "model": "mlp"}, {"name": "a", "learning_rate": 0.01}]', {"default": 3 * BATCH, "b": BATCH, "a": 2 * BATCH}, [("challenger_added", "b")]),
    ('[{"name": "b", "model": "mlp"}]', {"default": 4 * BATCH, "b": 2 * BATCH}, [("challenger_dropped", "a")]),
    ("", {"default": 5 * BATCH}, [("challengers_dropped", "['b']")]),
]


@pytest.mark.integration
@pytest.mark.usefixtures("clean_settings_sources")
async def test_restarts_that_add_and_drop_challengers_keep_the_models_still_named(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints = kafka_broker.bootstrap_servers, tmp_path / "checkpoints"
    for run, (challengers, trained, expected_warnings) in enumerate(CHALLENGER_RUNS):
        total = (run + 1) * BATCH
        await produce(bootstrap, topics, run * BATCH, BATCH)
        service = start_service(**FAST, challengers=challengers)
        await wait_for_progress(
            service,
            lambda p: p["events_predicted"] == total and p["labels_joined"] == total and p["queued_examples"] == 0,
            f"run {run}: every event predicted and every label trained",
        )
        assert service.stop() == 0, service.log_tail()
        warnings = [e for e in service.log_events() if e.get("event", "").startswith("challenger")]
        assert [(e["event"], str(e.get("model", e.get("models")))) for e in warnings] == expected_warnings, warnings

        shown = checkpoint_show(checkpoints)
        assert shown["labels_joined"] == shown["examples_trained"] == total, shown
        state = CheckpointStore(checkpoints, keep=1).load_latest().state["trainer"]  # type: ignore[union-attr]
        by_model = {"default": state["counters"]["examples_trained"]}
        by_model.update({n: s["counters"]["examples_trained"] for n, s in state.get("challengers", {}).items()})
        assert by_model == trained
