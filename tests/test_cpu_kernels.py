"""CPU_KERNELS: the compiled fast paths (auto) and the library paths (off) train alike and share checkpoints."""

from __future__ import annotations

import copy
import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from stream_learner.config import Settings
from stream_learner.kernels import moments as compiled_moments
from stream_learner.kernels.dense_net import DenseNet
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import build_model
from stream_learner.learning.standardizer import Standardizer, float32_mean_std, merged_moments
from stream_learner.learning.trainer import Trainer
from stream_learner.tools.synthetic import DriftingStream

DIM = 8
STEPS = 40
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("clean_settings_sources")
models = pytest.mark.parametrize("model", ["linear", "mlp"])
tasks = pytest.mark.parametrize("task", ["classification", "regression"])


def trainer(kernels: str, model: str, task: str) -> Trainer:
    settings = Settings(input_dim=DIM, model=model, task=task, cpu_kernels=kernels)
    return Trainer(build_model(settings), settings, CPU)


def steps(task: str, start: int = 0, count: int = STEPS) -> list[Examples]:
    """Batches of the drifting stream: its classes, or its first feature (scaled) as the regression target."""
    stream, batches = DriftingStream(DIM, drift_at=None), []
    for at in range(start * 32, (start + count) * 32, 32):
        batch = stream.batch(at, 32)
        labels = batch.labels if task == "classification" else 3.0 * batch.features[:, 0] + 1.0
        width = 2 if task == "classification" else 1
        batches.append(
            Examples(batch.features.astype(np.float32), labels.astype(np.float64), np.zeros((32, width), np.float32))
        )
    return batches


def assert_same_state(auto: Trainer, off: Trainer, rtol: float, atol: float) -> None:
    """Weights, standardizer moments and optimizer state agree; the states have the same keys."""
    auto_model, off_model = auto.model.state_dict(), off.model.state_dict()
    assert auto_model.keys() == off_model.keys()
    for name, value in off_model.items():
        np.testing.assert_allclose(auto_model[name].numpy(), value.numpy(), rtol=rtol, atol=atol, err_msg=name)
    auto_state, off_state = auto.optimizer.state_dict()["state"], off.optimizer.state_dict()["state"]
    assert auto_state.keys() == off_state.keys()
    for index, state in off_state.items():
        assert state.keys() == auto_state[index].keys()
        for key, value in state.items():
            np.testing.assert_allclose(
                auto_state[index][key].numpy(), value.numpy(), rtol=rtol, atol=atol, err_msg=f"{index}.{key}"
            )
    assert auto.state_dict().keys() == off.state_dict().keys()


@models
@tasks
def test_auto_and_off_end_with_the_same_weights_optimizer_state_and_losses(model: str, task: str) -> None:
    auto, off = trainer("auto", model, task), trainer("off", model, task)
    assert isinstance(auto._net, DenseNet) and auto._host_adam is not None and auto._fused_adam is not None
    assert not isinstance(off._net, DenseNet) and off._host_adam is None and off._fused_adam is None
    for step in steps(task):
        assert auto.learn_many(step) == pytest.approx(off.learn_many(step), rel=1e-4, abs=1e-6)
    assert replace(auto.counters, last_loss=0.0) == replace(off.counters, last_loss=0.0)
    assert auto.counters.optimizer_steps == STEPS and auto.counters.skipped_steps == 0
    assert_same_state(auto, off, rtol=1e-4, atol=1e-5)
    probe = DriftingStream(DIM, drift_at=None).batch(10_000, 64).features.astype(np.float32)
    np.testing.assert_allclose(auto.predict_many(probe), off.predict_many(probe), rtol=1e-4, atol=1e-5)


def checkpoint(trained: Trainer) -> dict[str, object]:
    """``trained.state_dict()`` through a file, as the checkpoint store writes and reads it."""
    blob = io.BytesIO()
    torch.save(trained.state_dict(), blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)  # type: ignore[no-any-return]


@models
@tasks
@pytest.mark.parametrize(("saved_by", "loaded_by"), [("auto", "off"), ("off", "auto")])
def test_a_checkpoint_of_one_loads_into_the_other_and_predicts_the_same(
    model: str, task: str, saved_by: str, loaded_by: str
) -> None:
    trained = trainer(saved_by, model, task)
    for step in steps(task, count=10):
        trained.learn_many(step)
    restored = trainer(loaded_by, model, task)
    assert restored.load_state_dict(checkpoint(trained)) == []
    for name, value in trained.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], value), name
    assert restored.counters == trained.counters
    probe = DriftingStream(DIM, drift_at=None).batch(10_000, 64).features.astype(np.float32)
    np.testing.assert_allclose(restored.predict_many(probe), trained.predict_many(probe), rtol=1e-5, atol=1e-6)
    # The optimizer state came along: the next steps stay together.
    for step in steps(task, start=10, count=5):
        assert restored.learn_many(step) == pytest.approx(trained.learn_many(step), rel=1e-4, abs=1e-6)
    assert_same_state(restored, trained, rtol=1e-4, atol=1e-5)


ROWS = [
    np.random.default_rng(3).normal(50.0, 7.0, (17, 4)).astype(np.float32),
    np.random.default_rng(4).normal(-2.0, 1e3, (5, 4)),
    np.asfortranarray(np.random.default_rng(5).normal(0.0, 1.0, (9, 4)).astype(np.float32)),
    np.array([[1.0, np.inf, np.nan, -np.inf]], np.float32),
    np.full((2, 4), 3e38, np.float32),
]


@pytest.mark.parametrize("rows", ROWS, ids=["float32", "float64", "fortran", "non-finite", "huge"])
def test_the_numpy_moments_equal_the_compiled_ones(rows: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    before = (7.0, rng.normal(size=4), rng.random(4) * 10)
    expected = compiled_moments.merged_moments(rows, *before)
    merged = merged_moments(rows, *before)
    assert merged[0] == expected[0]
    np.testing.assert_allclose(merged[1], expected[1], rtol=1e-13)  # up to the order of float64 roundings
    np.testing.assert_allclose(merged[2], expected[2], rtol=1e-13)
    for count in (0.0, 1.0, merged[0]):
        computed, wanted = (
            float32_mean_std(count, *expected[1:], 1e-6),
            compiled_moments.float32_mean_std(count, *expected[1:], 1e-6),
        )
        for ours, theirs in zip(computed, wanted, strict=True):
            assert ours.dtype == theirs.dtype == np.float32
            np.testing.assert_array_equal(ours, theirs)


def test_a_standardizer_saves_the_same_state_either_way() -> None:
    data = np.random.default_rng(2).normal(5.0, 3.0, (40, 4)).astype(np.float32)
    compiled, plain = Standardizer(4), Standardizer(4, kernels=False)
    for standardizer in (compiled, plain):
        for start in range(0, 40, 13):
            standardizer.update(data[start : start + 13])
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(value, plain.state_dict()[name]) for name, value in compiled.state_dict().items())
    loaded = Standardizer(4, kernels=False)
    loaded.load_state_dict(copy.deepcopy(compiled.state_dict()))
    x = torch.from_numpy(data)
    assert torch.equal(loaded(x), compiled(x))
