"""Standardizer, Trainer, build_model and PrequentialMetrics."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.learning.prequential import PrequentialMetrics
from stream_learner.kernels.dense_net import DenseNet
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import StandardizedModel, build_model
from stream_learner.learning.optimizer import OptimizerChange, OptimizerSpec
from stream_learner.learning.standardizer import Standardizer
from stream_learner.learning.trainer import Trainer
from stream_learner.tools.synthetic import DriftingStream

DIM = 8
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("clean_settings_sources")


def trainer(autograd: bool = False, **overrides: object) -> Trainer:
    """A trainer on the CPU: its dense net (the built-in models' path there), or with ``autograd`` torch's
    (``CPU_KERNELS=off``)."""
    settings = Settings(input_dim=DIM, cpu_kernels="off" if autograd else "auto", **overrides)  # type: ignore[arg-type]
    return Trainer(build_model(settings), settings, CPU)


def on_dense_net(model: Trainer) -> bool:
    return isinstance(model._net, DenseNet)


both_paths = pytest.mark.parametrize("autograd", [False, True], ids=["dense", "autograd"])


def examples(features: np.ndarray, labels: np.ndarray, output_dim: int = 2) -> Examples:
    return Examples(features.astype(np.float32), labels.astype(np.float64), np.zeros((len(labels), output_dim), np.float32))


def stream_examples(stream: DriftingStream, start: int, n: int) -> Examples:
    batch = stream.batch(start, n)
    return examples(batch.features, batch.labels)


def test_standardizer_matches_numpy_over_batches_of_different_sizes() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(50.0, 7.0, (1 + 5 + 17 + 3 + 40, 4)) * np.array([1, 10, 0.1, 1000])
    standardizer = Standardizer(4)
    start = 0
    for size in (1, 5, 0, 17, 3, 40):
        standardizer.update(torch.from_numpy(data[start : start + size]))
        start += size
    assert standardizer.count.item() == len(data)
    np.testing.assert_allclose(standardizer.mean.numpy(), data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(standardizer.std().numpy() ** 2, data.var(axis=0, ddof=1), rtol=1e-10)
    out = standardizer(torch.from_numpy(data))
    np.testing.assert_allclose(out.mean(dim=0).numpy(), 0.0, atol=1e-9)


def test_linear_model_learns_a_separable_stream_from_a_few_hundred_labels() -> None:
    stream = DriftingStream(DIM, drift_at=None)
    model = trainer()
    for start in range(0, 512, 32):
        assert math.isfinite(model.learn_many(stream_examples(stream, start, 32)))
    held_out = stream.batch(1_000_000, 2000)
    accuracy = (model.predict_many(held_out.features).argmax(axis=1) == held_out.labels).mean()
    assert accuracy > 0.9
    assert model.model_version == model.counters.optimizer_steps == 16
    assert model.counters.examples_trained == 512


def parameters(model: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.model.named_parameters()}


@both_paths
def test_step_with_non_finite_loss_is_skipped_and_weights_stay(autograd: bool) -> None:
    model = trainer(autograd, task="regression")
    assert on_dense_net(model) != autograd
    stream = DriftingStream(DIM, drift_at=None)
    good = stream.batch(0, 16)
    model.learn_many(examples(good.features, good.labels, output_dim=1))
    before = parameters(model)
    labels = np.full(16, 1e30)  # fits float32, but its square does not: the MSE is inf
    assert math.isnan(model.learn_many(examples(good.features, labels, output_dim=1)))
    assert model.counters.skipped_steps == 1 and model.counters.examples_skipped == 16
    assert model.model_version == 1
    after = parameters(model)
    assert all(torch.equal(before[name], after[name]) for name in before)


@both_paths
def test_step_on_inf_features_is_skipped_and_leaves_the_model_usable(autograd: bool) -> None:
    model = trainer(autograd)
    assert on_dense_net(model) != autograd
    stream = DriftingStream(DIM, drift_at=None)
    model.learn_many(stream_examples(stream, 0, 32))
    probe = stream.batch(500, 8).features
    state_before = {k: v.clone() for k, v in model.model.state_dict().items()}
    predictions_before = model.predict_many(probe)
    poisoned = stream_examples(stream, 32, 32)
    poisoned.features[0, 0] = np.inf
    assert math.isnan(model.learn_many(poisoned))
    assert model.counters.skipped_steps == 1
    assert all(torch.equal(v, state_before[k]) for k, v in model.model.state_dict().items())
    np.testing.assert_array_equal(model.predict_many(probe), predictions_before)


def test_state_dict_survives_weights_only_load_and_restores_identical_behaviour() -> None:
    stream = DriftingStream(DIM, drift_at=None)
    original = trainer(model="mlp")
    for start in range(0, 96, 32):
        original.learn_many(stream_examples(stream, start, 32))
    blob = io.BytesIO()
    torch.save(original.state_dict(), blob)
    blob.seek(0)
    restored = trainer(model="mlp", seed=99)
    probe = stream.batch(10_000, 64).features
    assert not np.array_equal(restored.predict_many(probe), original.predict_many(probe))
    restored.load_state_dict(torch.load(blob, weights_only=True))

    np.testing.assert_array_equal(restored.predict_many(probe), original.predict_many(probe))
    assert restored.counters == original.counters
    # The optimizer state came back too: the next step lands on the same weights.
    step = stream_examples(stream, 96, 32)
    assert restored.learn_many(step) == original.learn_many(step)
    np.testing.assert_array_equal(restored.predict_many(probe), original.predict_many(probe))


def tanh_mlp_factory(settings: Settings) -> nn.Module:
    """A standardized mlp that the dense net does not take: autograd computes its gradients under either setting."""
    h = settings.hidden_dim
    net = nn.Sequential(nn.Linear(settings.input_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, settings.output_dim))
    return StandardizedModel(Standardizer(settings.input_dim), net)


@pytest.mark.parametrize("model", ["factory", "tanh_mlp_factory"])
def test_the_direct_fused_adam_step_lands_on_the_weights_and_state_of_optimizer_step(model: str) -> None:
    """The direct step (CPU_KERNELS=auto) against ``optimizer.step()`` (off), on models autograd steps either way."""
    stream = DriftingStream(DIM, drift_at=None)
    name = f"{__name__}:{model}"
    direct, reference = trainer(model=name, weight_decay=0.01), trainer(True, model=name, weight_decay=0.01)
    assert direct._fused_adam is not None, "the default optimizer should take the direct path"
    assert reference._fused_adam is None and not on_dense_net(direct) and not on_dense_net(reference)
    for start in range(0, 40 * 32, 32):
        step = stream_examples(stream, start, 32)
        assert direct.learn_many(step) == reference.learn_many(step)
    for name, value in reference.model.state_dict().items():
        assert torch.equal(direct.model.state_dict()[name], value), name
    direct_state, reference_state = direct.optimizer.state_dict()["state"], reference.optimizer.state_dict()["state"]
    assert direct_state.keys() == reference_state.keys()
    for index, state in reference_state.items():
        assert float(state["step"]) == 40
        for key, value in state.items():
            assert torch.equal(direct_state[index][key], value), (index, key)


def factory(settings: Settings) -> nn.Module:
    return nn.Sequential(nn.Linear(settings.input_dim, 4), nn.Tanh(), nn.Linear(4, settings.output_dim))


def wrong_shape_factory(settings: Settings) -> nn.Module:
    return nn.Linear(settings.input_dim, settings.output_dim + 1)


def not_a_module(settings: Settings) -> object:
    return "linear"


def test_build_model_loads_a_custom_factory() -> None:
    model = build_model(Settings(input_dim=DIM, model=f"{__name__}:factory"))
    assert isinstance(model, nn.Sequential)
    assert model(torch.zeros(5, DIM)).shape == (5, 2)


@pytest.mark.parametrize(
    "spec",
    [f"{__name__}:wrong_shape_factory", f"{__name__}:not_a_module", f"{__name__}:missing", "no_such_module_xyz:factory", f"{__name__}:DIM"],
)
def test_build_model_rejects_a_bad_factory(spec: str) -> None:
    with pytest.raises(ConfigError):
        build_model(Settings(input_dim=DIM, model=spec))


def test_classification_metrics_against_hand_computed_values() -> None:
    metrics = PrequentialMetrics("classification", window=2)
    assert metrics.summary() == {"examples": 0, "accuracy": None, "log_loss": None, "recent_accuracy": None, "recent_log_loss": None}
    metrics.update(np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32), np.array([0.0, 0.0, 1.0]))
    summary = metrics.summary()
    assert summary["examples"] == 3
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.3) + math.log(0.4)) / 3, rel=1e-6)
    assert summary["recent_accuracy"] == 0.0
    assert summary["recent_log_loss"] == pytest.approx(-(math.log(0.3) + math.log(0.4)) / 2, rel=1e-6)


def test_log_loss_of_a_zero_probability_is_clipped() -> None:
    metrics = PrequentialMetrics("classification", window=10)
    metrics.update(np.array([[1.0, 0.0]], np.float32), np.array([1.0]))
    assert metrics.summary()["log_loss"] == pytest.approx(-math.log(1e-7))


def test_regression_metrics_against_hand_computed_values() -> None:
    metrics = PrequentialMetrics("regression", window=2)
    assert metrics.summary() == {"examples": 0, "mae": None, "rmse": None, "recent_mae": None, "recent_rmse": None}
    metrics.update(np.array([[1.0], [2.0], [4.0]], np.float32), np.array([0.0, 2.0, 1.0]))  # errors 1, 0, 3
    summary = metrics.summary()
    assert summary["mae"] == pytest.approx(4 / 3)
    assert summary["rmse"] == pytest.approx(math.sqrt(10 / 3))
    assert summary["recent_mae"] == pytest.approx(1.5)
    assert summary["recent_rmse"] == pytest.approx(math.sqrt(4.5))


def test_window_keeps_only_the_last_n_across_updates() -> None:
    metrics = PrequentialMetrics("regression", window=3)
    for error in (100.0, 100.0, 1.0, 2.0):
        metrics.update(np.array([[error]], np.float32), np.array([0.0]))
    metrics.update(np.array([[3.0], [4.0], [5.0], [6.0]], np.float32), np.zeros(4))  # bigger than the window
    summary = metrics.summary()
    assert summary["examples"] == 8
    assert summary["recent_mae"] == pytest.approx(5.0)  # 4, 5, 6
    assert summary["mae"] == pytest.approx((100 + 100 + 1 + 2 + 3 + 4 + 5 + 6) / 8)
    metrics.update(np.array([[9.0]], np.float32), np.zeros(1))
    assert metrics.summary()["recent_mae"] == pytest.approx(20 / 3)  # 5, 6, 9


def regression_trainer(autograd: bool = False, **overrides: object) -> Trainer:
    settings = Settings(input_dim=2, task="regression", cpu_kernels="off" if autograd else "auto", **overrides)  # type: ignore[arg-type]
    return Trainer(build_model(settings), settings, torch.device("cpu"))


def regression_batch(rng: np.random.Generator, scale: float = 1.0, n: int = 32) -> Examples:
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0]) * scale).astype(np.float64)
    return Examples(x, y, np.zeros((n, 1), np.float32))


@both_paths
def test_a_poisoned_burst_is_skipped_and_counted_and_the_weights_stay(autograd: bool) -> None:
    trainer, rng = regression_trainer(autograd), np.random.default_rng(0)
    assert on_dense_net(trainer) != autograd
    for _ in range(40):
        trainer.learn_many(regression_batch(rng))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for _ in range(3):
        poisoned = regression_batch(rng)
        assert math.isnan(trainer.learn_many(Examples(poisoned.features, poisoned.labels * 1e4, poisoned.scores)))
    assert trainer.counters.poisoned_steps == 3 and trainer.counters.skipped_steps == 3
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert not math.isnan(trainer.learn_many(regression_batch(rng))), "normal steps go on after the burst"


@both_paths
def test_a_lasting_change_of_loss_level_is_accepted_as_drift(autograd: bool) -> None:
    trainer, rng = regression_trainer(autograd), np.random.default_rng(1)
    assert on_dense_net(trainer) != autograd
    for _ in range(40):
        trainer.learn_many(regression_batch(rng))
    losses = [trainer.learn_many(regression_batch(rng, scale=-50.0)) for _ in range(30)]
    assert sum(math.isnan(v) for v in losses) == 9, "at most MAX_SPIKES_IN_ROW - 1 steps are skipped"
    assert not math.isnan(losses[-1])


def test_rollback_restores_the_last_good_weights_and_version() -> None:
    trainer, rng = regression_trainer(), np.random.default_rng(2)
    for _ in range(5):
        trainer.learn_many(regression_batch(rng))
    good = trainer.state_dict()
    for _ in range(5):
        trainer.learn_many(regression_batch(rng))
    trainer.rollback(good)
    assert trainer.model_version == 5 and trainer.counters.rollbacks == 1 and trainer.counters.examples_trained == 320
    assert all(torch.equal(good["model"][k], v) for k, v in trainer.model.state_dict().items())


@both_paths
@pytest.mark.parametrize("restore", ["rollback", "load_state_dict"])
def test_steps_after_a_restore_leave_the_restored_state_as_it_was(autograd: bool, restore: str) -> None:
    """The service keeps the state it restores as the guardrail's last good one: a second rollback
    must get the same optimizer state as the first (torch's load_state_dict keeps the given tensors)."""
    trainer, rng = regression_trainer(autograd), np.random.default_rng(3)
    for _ in range(3):
        trainer.learn_many(regression_batch(rng))
    good = trainer.state_dict()
    kept = copy.deepcopy(good)
    getattr(trainer, restore)(good)
    for _ in range(3):
        trainer.learn_many(regression_batch(rng))
    for index, state in kept["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(good["optimizer"]["state"][index][name], value), name


class _RecordsModes(nn.Module):
    """Overrides train(), as a model that freezes some layers would: the trainer must call it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 16), nn.Dropout(0.5), nn.Linear(16, 2))
        self.modes: list[bool] = []

    def train(self, mode: bool = True) -> "_RecordsModes":
        self.modes.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def dropout_factory(settings: Settings) -> nn.Module:
    return nn.Sequential(nn.Linear(settings.input_dim, 16), nn.Dropout(0.5), nn.Linear(16, settings.output_dim))


def modes_factory(settings: Settings) -> nn.Module:
    return _RecordsModes()


@pytest.mark.parametrize("factory", ["dropout_factory", "modes_factory"])
def test_predictions_run_in_eval_mode_and_steps_in_train_mode(factory: str) -> None:
    t = trainer(model=f"{__name__}:{factory}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, DIM)).astype(np.float32)
    batch = examples(x, rng.integers(0, 2, 64).astype(np.float64))
    for _ in range(3):
        t.learn_many(batch)
        assert all(m.training for m in t.model.modules())
        first = t.predict_many(x)
        assert not any(m.training for m in t.model.modules())
        np.testing.assert_array_equal(first, t.predict_many(x))  # dropout off
    if factory == "modes_factory":
        assert isinstance(t.model, _RecordsModes) and t.model.modes[-2:] == [True, False]


# --- restoring under changed optimizer settings --------------------------------------------------


def trained_state(autograd: bool, steps: int = 3, **overrides: object) -> dict[str, object]:
    """A trainer's state after ``steps`` steps on the drifting stream (its copy: steps after do not change it)."""
    stream, model = DriftingStream(DIM, drift_at=None), trainer(autograd, **overrides)
    for start in range(0, steps * 32, 32):
        model.learn_many(stream_examples(stream, start, 32))
    return copy.deepcopy(model.state_dict())


def optimizer_tensors(model: Trainer) -> dict[tuple[int, str], torch.Tensor]:
    return {(i, k): v for i, s in model.optimizer.state_dict()["state"].items() for k, v in s.items() if isinstance(v, torch.Tensor)}


@both_paths
def test_a_restore_takes_the_configured_learning_rate_and_weight_decay_and_keeps_the_optimizer_state(autograd: bool) -> None:
    saved = trained_state(autograd)  # adam, learning rate 0.05, no weight decay
    restored = trainer(autograd, learning_rate=0.5, weight_decay=0.1)
    changes = restored.load_state_dict(saved)
    assert changes == [OptimizerChange("learning_rate", 0.05, 0.5), OptimizerChange("weight_decay", 0.0, 0.1)]
    assert [(g["lr"], g["weight_decay"]) for g in restored.optimizer.param_groups] == [(0.5, 0.1)]
    moments = {(i, k): v for i, s in saved["optimizer"]["state"].items() for k, v in s.items()}  # type: ignore[index]
    assert optimizer_tensors(restored).keys() == moments.keys()
    assert all(torch.equal(optimizer_tensors(restored)[key], value) for key, value in moments.items())
    assert restored.state_dict()["optimizer_spec"] == {"kind": "adam", "learning_rate": 0.5, "weight_decay": 0.1}
    # The step itself uses them: it lands where a state saved with them in the first place takes it.
    reference = trainer(autograd, learning_rate=0.5, weight_decay=0.1)
    edited = copy.deepcopy(saved)
    edited["optimizer"]["param_groups"][0].update(lr=0.5, weight_decay=0.1)  # type: ignore[index]
    edited["optimizer_spec"] = {"kind": "adam", "learning_rate": 0.5, "weight_decay": 0.1}
    assert reference.load_state_dict(edited) == []
    step = stream_examples(DriftingStream(DIM, drift_at=None), 1000, 32)
    assert restored.learn_many(step) == reference.learn_many(step)
    assert all(torch.equal(v, reference.model.state_dict()[k]) for k, v in restored.model.state_dict().items())


@both_paths
@pytest.mark.parametrize(("old", "new"), [("adam", "sgd"), ("sgd", "adam"), ("adam", "adagrad"), ("adagrad", "sgd")])
def test_a_restore_of_another_optimizer_keeps_the_weights_and_starts_the_optimizer_afresh(autograd: bool, old: str, new: str) -> None:
    saved = trained_state(autograd, optimizer=old)
    restored = trainer(autograd, optimizer=new)
    assert restored.load_state_dict(saved) == [OptimizerChange("optimizer", old, new)]
    assert all(torch.equal(v, saved["model"][k]) for k, v in restored.model.state_dict().items())  # type: ignore[index]
    assert optimizer_tensors(restored) == {}
    assert restored.counters.optimizer_steps == 3
    # The same step as a new optimizer of that kind on the same weights: no state of the old one leaks in.
    fresh = trainer(autograd, optimizer=new)
    fresh.model.load_state_dict(saved["model"])  # type: ignore[arg-type]
    stream = DriftingStream(DIM, drift_at=None)
    for start in (1000, 1032):
        step = stream_examples(stream, start, 32)
        loss = restored.learn_many(step)
        assert math.isfinite(loss) and loss == fresh.learn_many(step)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in restored.model.state_dict().items())
    assert restored.state_dict()["optimizer_spec"]["kind"] == new


@pytest.mark.parametrize("kind", ["adam", "sgd", "adagrad"])
def test_a_state_written_before_states_recorded_their_optimizer_has_it_read_from_its_param_groups(kind: str) -> None:
    saved = trained_state(False, optimizer=kind, learning_rate=0.02, weight_decay=0.001)
    recorded = OptimizerSpec.saved_in(saved)
    del saved["optimizer_spec"]
    assert OptimizerSpec.saved_in(saved) == recorded == OptimizerSpec(kind, 0.02, 0.001)
    same = trainer(optimizer=kind, learning_rate=0.02, weight_decay=0.001)
    assert same.load_state_dict(saved) == []
    saved_state = saved["optimizer"]["state"].items()  # type: ignore[index]
    assert optimizer_tensors(same).keys() == {(i, k) for i, st in saved_state for k, v in st.items() if isinstance(v, torch.Tensor)}
    changes = trainer(optimizer=kind, learning_rate=0.5).load_state_dict(saved)
    assert changes == [OptimizerChange("learning_rate", 0.02, 0.5), OptimizerChange("weight_decay", 0.001, 0.0)]
    other = "sgd" if kind != "sgd" else "adam"
    assert trainer(optimizer=other).load_state_dict(saved) == [OptimizerChange("optimizer", kind, other)]


@both_paths
def test_a_rollback_keeps_the_configured_optimizer(autograd: bool) -> None:
    """The guardrail's last good state may be a checkpoint made with other optimizer settings."""
    changed = trainer(autograd, learning_rate=0.5, weight_decay=0.1)
    changed.load_state_dict(trained_state(autograd))
    changed.learn_many(stream_examples(DriftingStream(DIM, drift_at=None), 500, 32))
    changed.rollback(trained_state(autograd))
    assert [(g["lr"], g["weight_decay"]) for g in changed.optimizer.param_groups] == [(0.5, 0.1)]
    migrated = trainer(autograd, optimizer="sgd")
    migrated.load_state_dict(trained_state(autograd))
    migrated.rollback(trained_state(autograd, steps=2))
    assert migrated.model_version == 2 and optimizer_tensors(migrated) == {}
    assert math.isfinite(migrated.learn_many(stream_examples(DriftingStream(DIM, drift_at=None), 500, 32)))


# --- a step with a few examples whose own loss is not finite ----------------------------------


@both_paths
def test_examples_whose_own_loss_is_not_finite_are_dropped_and_the_step_runs_on_the_rest(autograd: bool) -> None:
    rng = np.random.default_rng(5)
    model, reference = regression_trainer(autograd), regression_trainer(autograd)
    warm_up = regression_batch(rng)
    for t in (model, reference):
        t.learn_many(warm_up)
    good = regression_batch(rng, n=31)
    huge = regression_batch(rng, n=1)
    assert np.isfinite(np.float32(1e20)) and 1e20**2 > float(np.finfo(np.float32).max), "finite in float32, its square not"
    step = Examples(
        np.concatenate([good.features[:17], huge.features, good.features[17:]]),
        np.concatenate([good.labels[:17], [1e20], good.labels[17:]]),
        np.zeros((32, 1), np.float32),
    )
    loss = model.learn_many(step)
    assert loss == reference.learn_many(good) and math.isfinite(loss)
    assert model.counters.examples_trained == 32 + 31 and model.counters.examples_skipped == 1
    assert model.counters.optimizer_steps == 2 and model.counters.skipped_steps == 0
    # The dropped example left no trace: weights, standardizer and optimizer are those of a step on the 31.
    assert all(torch.equal(v, reference.model.state_dict()[k]) for k, v in model.model.state_dict().items())
    assert all(torch.equal(v, optimizer_tensors(reference)[k]) for k, v in optimizer_tensors(model).items())


@both_paths
def test_a_step_whose_examples_all_have_a_non_finite_loss_is_skipped_whole(autograd: bool) -> None:
    rng = np.random.default_rng(6)
    model = regression_trainer(autograd)
    model.learn_many(regression_batch(rng))
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    poisoned = regression_batch(rng, n=4)
    assert math.isnan(model.learn_many(Examples(poisoned.features, np.full(4, -1e20), poisoned.scores)))
    assert model.counters.skipped_steps == 1 and model.counters.examples_skipped == 4 and model.counters.examples_trained == 32
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
