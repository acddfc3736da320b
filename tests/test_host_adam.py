"""HostAdam against torch's fused Adam: same parameters, state and gradients after every step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.kernels.host_adam import HostAdam

SHAPES = [(16, 8), (16,), (3, 16), (3,)]


def pair(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> tuple[torch.optim.Adam, torch.optim.Adam, HostAdam, list[torch.Tensor]]:
    """A torch fused Adam and a HostAdam over equal parameters; the HostAdam's gradient buffers."""
    torch.manual_seed(0)
    reference = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    params = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    options = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "fused": True}
    expected, optimizer = torch.optim.Adam(reference, **options), torch.optim.Adam(params, **options)
    buffers = [torch.zeros_like(p) for p in params]
    for p, buffer in zip(params, buffers):
        p.grad = buffer
    return expected, optimizer, HostAdam(optimizer, [b.numpy() for b in buffers]), buffers


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor], scale: float) -> None:
    for p, grad in zip(params, grads):
        p.grad = grad.clone()
    torch._foreach_mul_([p.grad for p in params], torch.tensor(scale))


@settings(max_examples=25, deadline=None)
@given(
    lr=st.floats(1e-4, 0.1),
    beta1=st.sampled_from([0.0, 0.3, 0.9]),
    beta2=st.sampled_from([0.9, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.01]),
    scales=st.lists(st.sampled_from([1.0, 0.37, 0.01]), min_size=2, max_size=12),
)
def test_every_step_equals_torchs_fused_adam(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, scales: list[float]) -> None:
    expected, optimizer, host, buffers = pair(lr, (beta1, beta2), eps, weight_decay)
    reference, params = expected.param_groups[0]["params"], optimizer.param_groups[0]["params"]
    generator = torch.Generator().manual_seed(1)
    for number, scale in enumerate(scales):
        grads = [torch.randn(shape, generator=generator) * (1 + number) for shape in SHAPES]
        set_grads(reference, grads, scale)
        expected.step()
        for buffer, grad in zip(buffers, grads):
            buffer.copy_(grad)
        if number == 0:
            assert not host.step(scale), "the state does not exist before torch's first step"
            set_grads(params, grads, scale)
            optimizer.step()
            for p, buffer in zip(params, buffers):
                buffer.copy_(p.grad)
                p.grad = buffer
        else:
            assert host.step(scale)
        for p, q, buffer in zip(reference, params, buffers):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(buffer.numpy(), p.grad.numpy(), rtol=1e-6, atol=1e-7)
            for name in ("exp_avg", "exp_avg_sq", "step"):
                np.testing.assert_allclose(optimizer.state[q][name].numpy(), expected.state[p][name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_loaded_state_is_the_one_stepped() -> None:
    _, optimizer, host, buffers = pair(1e-2, (0.9, 0.999), 1e-8, 0.0)
    for buffer in buffers:
        buffer.fill_(1.0)
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())  # state_dict() shares the state's tensors
    assert host.step() and host.step()
    params = optimizer.param_groups[0]["params"]
    assert float(optimizer.state[params[0]]["step"]) == 3.0
    optimizer.load_state_dict(saved)
    assert host.step()
    assert float(optimizer.state[params[0]]["step"]) == 2.0


def test_a_state_it_cannot_view_is_left_to_torch() -> None:
    _, optimizer, host, _ = pair(1e-2, (0.9, 0.999), 1e-8, 0.0)
    optimizer.step()
    first = optimizer.param_groups[0]["params"][0]
    optimizer.state[first]["exp_avg"] = optimizer.state[first]["exp_avg"].double()
    optimizer.state = dict(optimizer.state)  # a replaced state, as load_state_dict makes
    assert not host.step()


def test_gradient_buffers_must_match_the_parameters() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], fused=True)
    with pytest.raises(ValueError, match="1 parameters"):
        HostAdam(optimizer, [])


@pytest.mark.parametrize("options", [{"amsgrad": True}, {"maximize": True}, {"lr": torch.tensor(0.01)}])
def test_an_adam_of_another_update_is_refused(options: dict[str, object]) -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="plain Adam"):
        HostAdam(torch.optim.Adam([param], **options), [np.zeros(2, np.float32)])  # type: ignore[arg-type]


def test_adamw_is_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="plain Adam"):
        HostAdam(torch.optim.AdamW([param]), [np.zeros(2, np.float32)])
