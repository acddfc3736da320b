"""DenseNet: the host-side forward and backward of Linear/ReLU stacks, against torch's autograd."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hypothesis_settings, strategies as st
from torch import nn

from stream_learner.config import Settings
from stream_learner.kernels.dense_net import DenseNet
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import StandardizedModel, build_model
from stream_learner.learning.standardizer import Standardizer
from stream_learner.learning.trainer import Trainer
from stream_learner.tools.synthetic import DriftingStream

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("clean_settings_sources")


def stack(widths: list[int], bias: list[bool], standardized: bool, seed: int) -> nn.Module:
    """Linear layers of ``widths`` with a ReLU between each two, behind a fitted standardizer."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias[i]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    net = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    if not standardized:
        return net
    standardizer = Standardizer(widths[0])
    standardizer.update(np.random.default_rng(seed).normal(3.0, 2.0, (50, widths[0])).astype(np.float32))
    return StandardizedModel(standardizer, net)


def autograd_loss_and_grads(model: nn.Module, x: np.ndarray, labels: np.ndarray, classification: bool) -> tuple[float, list[torch.Tensor]]:
    out = model(torch.from_numpy(x))
    if classification:
        loss = nn.functional.cross_entropy(out, torch.from_numpy(labels).long())
    else:
        loss = nn.functional.mse_loss(out[:, 0], torch.from_numpy(labels).float())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(loss.detach()), list(grads)


@st.composite
def stacks_and_batches(draw: st.DrawFn) -> tuple[nn.Module, np.ndarray, np.ndarray, bool]:
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 12)) for _ in range(depth)]
    classification = draw(st.booleans())
    widths.append(draw(st.integers(2, 5)) if classification else 1)
    bias = [draw(st.booleans()) for _ in range(depth)]
    model = stack(widths, bias, draw(st.booleans()), draw(st.integers(0, 1000)))
    rows = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = rng.normal(3.0, 4.0, (rows, widths[0])).astype(np.float32)
    labels = rng.integers(0, widths[-1], rows).astype(np.float64) if classification else rng.normal(0, 3, rows)
    return model, x, labels, classification


@hypothesis_settings(max_examples=150, deadline=None)
@given(stacks_and_batches())
def test_loss_gradients_and_scores_equal_autograds(case: tuple[nn.Module, np.ndarray, np.ndarray, bool]) -> None:
    model, x, labels, classification = case
    dense = DenseNet.of(model)
    assert dense is not None
    loss, grads = autograd_loss_and_grads(model, x, labels, classification)
    dense_loss, dense_norm = dense.loss_and_grads(x, labels, classification)
    assert dense_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for p, grad in zip(model.parameters(), grads):
        np.testing.assert_allclose(p.grad.numpy(), grad.numpy(), rtol=1e-4, atol=1e-6)
    assert dense_norm == pytest.approx(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)), rel=1e-4, abs=1e-7)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        expected = torch.softmax(out, dim=1) if classification else out
    np.testing.assert_allclose(dense.scores(x, softmax=classification), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_non_finite_feature_gives_a_non_finite_loss() -> None:
    model = stack([4, 8, 2], [True, True], True, 0)
    dense = DenseNet.of(model)
    assert dense is not None
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.nan
    loss, _ = dense.loss_and_grads(x, np.array([0.0, 1.0, 1.0]), True)
    assert math.isnan(loss)


def test_a_label_outside_the_classes_is_an_error_as_with_autograd() -> None:
    dense = DenseNet.of(stack([4, 3], [True], False, 0))
    assert dense is not None
    with pytest.raises(IndexError):
        dense.loss_and_grads(np.ones((2, 4), np.float32), np.array([0.0, 3.0]), True)


def with_hook(model: nn.Module) -> nn.Module:
    model.register_forward_hook(lambda *args: None)
    return model


def frozen(model: nn.Module) -> nn.Module:
    next(model.parameters()).requires_grad_(False)
    return model


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2)),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
        nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),
        nn.Linear(4, 2).double(),
        with_hook(nn.Linear(4, 2)),
        frozen(nn.Linear(4, 2)),
        nn.Sequential(*[nn.Linear(4, 4)] * 2),
        StandardizedModel(type("OwnStandardizer", (Standardizer,), {})(4), nn.Linear(4, 2)),
    ],
    ids=["dropout", "relu-first", "relu-last", "tanh", "float64", "hook", "frozen", "shared", "own-standardizer"],
)
def test_anything_but_a_plain_linear_relu_stack_keeps_autograd(model: nn.Module) -> None:
    assert DenseNet.of(model) is None


@pytest.mark.parametrize("register", ["forward", "forward_pre", "full_backward", "full_backward_pre"])
def test_a_hook_registered_for_every_module_keeps_autograd(register: str) -> None:
    """DenseNet.of reads torch's private globals of such hooks: a torch that moves them fails here."""
    handle = getattr(nn.modules.module, f"register_module_{register}_hook")(lambda *args: None)
    try:
        assert DenseNet.of(nn.Linear(4, 2)) is None
    finally:
        handle.remove()
    assert DenseNet.of(nn.Linear(4, 2)) is not None


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_trainer_on_the_dense_net_follows_the_autograd_trainer(model: str, task: str) -> None:
    """Same stream, same settings (a clip norm low enough to clip): the weights stay together over 60 steps."""
    settings = Settings(input_dim=8, model=model, task=task, grad_clip_norm=0.5)
    library = Settings(input_dim=8, model=model, task=task, grad_clip_norm=0.5, cpu_kernels="off")
    dense = Trainer(build_model(settings), settings, CPU)
    reference = Trainer(build_model(library), library, CPU)
    assert isinstance(dense._net, DenseNet) and dense._host_adam is not None and not isinstance(reference._net, DenseNet)
    stream = DriftingStream(8, drift_at=None)
    for start in range(0, 60 * 32, 32):
        batch = stream.batch(start, 32)
        labels = batch.labels.astype(np.float64) if task == "classification" else batch.features[:, 0].astype(np.float64)
        step = Examples(batch.features.astype(np.float32), labels, np.zeros((32, settings.output_dim), np.float32))
        assert dense.learn_many(step) == pytest.approx(reference.learn_many(step), rel=1e-3, abs=1e-5)
    for name, value in reference.model.state_dict().items():
        np.testing.assert_allclose(dense.model.state_dict()[name].numpy(), value.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)
    probe = stream.batch(10_000, 64).features.astype(np.float32)
    np.testing.assert_allclose(dense.predict_many(probe), reference.predict_many(probe), rtol=1e-3, atol=1e-4)


def test_after_a_restore_the_dense_net_predicts_with_the_restored_weights() -> None:
    settings = Settings(input_dim=8, model="mlp")
    trained, restored = Trainer(build_model(settings), settings, CPU), Trainer(build_model(settings), settings, CPU)
    stream = DriftingStream(8, drift_at=None)
    for start in range(0, 20 * 32, 32):
        batch = stream.batch(start, 32)
        trained.learn_many(Examples(batch.features.astype(np.float32), batch.labels.astype(np.float64), np.zeros((32, 2), np.float32)))
    probe = stream.batch(10_000, 64).features.astype(np.float32)
    before = restored.predict_many(probe)
    restored.load_state_dict(copy.deepcopy(trained.state_dict()))
    assert not np.allclose(restored.predict_many(probe), before)
    np.testing.assert_array_equal(restored.predict_many(probe), trained.predict_many(probe))
    with torch.no_grad():
        expected = torch.softmax(restored.model(torch.from_numpy(probe)), dim=1).numpy()
    np.testing.assert_allclose(restored.predict_many(probe), expected, rtol=1e-5, atol=1e-6)
