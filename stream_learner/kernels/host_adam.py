"""Adam's update of a dense net's parameters in a compiled loop, on the optimizer's own state tensors.

On the CPU, torch's fused Adam spends a small model's step on dispatch rather than arithmetic.
Where the trainer computes gradients with :class:`~.dense_net.DenseNet`, :class:`HostAdam` makes
the same update through numpy views of the same tensors (under ``CPU_KERNELS=auto``).

Guarantees:
- The arithmetic of torch's fused CPU kernel for float32 (``FusedAdamKernel.cpp``, Adam's
  "original" L2 weight decay): the step counter advances in float32, the bias corrections are
  computed in float64, the rest in float32; the result equals torch's up to the order of
  float32 roundings (``tests/test_host_adam.py``).
- The state is the optimizer's (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, read and
  written in place), so ``optimizer.state_dict()`` and checkpoints are unchanged, and a
  ``load_state_dict`` (which replaces the state) is seen at the next step.
- ``grad_scale`` multiplies every gradient first, and the scaled gradient is left in the
  gradient buffer, as ``clip_grads_with_norm_`` would leave it.
- :meth:`HostAdam.step` does nothing and returns False until every parameter has its state
  (torch's own first ``step()`` creates it) or where a state tensor is not a contiguous
  float32 CPU tensor; the trainer takes ``optimizer.step()`` then.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stream_learner.kernels.compiled import compiled

_Views = list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class HostAdam:
    """Steps a single-group, fused-style ``torch.optim.Adam`` over CPU float32 parameters and given gradient buffers."""

    def __init__(self, optimizer: torch.optim.Optimizer, grads: list[np.ndarray]) -> None:
        """``grads``: numpy views of the gradient buffers, in the order of the group's parameters.

        Raises ValueError for an optimizer whose update this is not: more than one parameter
        group, amsgrad, maximize, AdamW's decoupled decay, or a learning rate or betas as tensors.
        """
        if not is_plain_adam(optimizer):
            raise ValueError("HostAdam takes a plain Adam with one parameter group")
        params = optimizer.param_groups[0]["params"]
        if len(grads) != len(params):
            raise ValueError(f"{len(grads)} gradient buffers for {len(params)} parameters")
        self.optimizer = optimizer
        self._params = [p.detach().numpy().reshape(-1) for p in params]
        self._grads = [g.reshape(-1) for g in grads]
        self._state: object = None
        self._views: _Views | None = None

    def step(self, grad_scale: float = 1.0) -> bool:
        """One Adam step of every parameter, gradients multiplied by ``grad_scale``; False if not taken."""
        views = self._state_views()
        if views is None:
            return False
        group = self.optimizer.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        for param, grad, exp_avg, exp_avg_sq, step in views:
            _adam(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, grad_scale)
        return True

    def _state_views(self) -> _Views | None:
        """numpy views of each parameter, its gradient and its state; rebuilt when the optimizer's state is replaced."""
        state = self.optimizer.state
        if self._views is not None and self._state is state:
            return self._views
        params = self.optimizer.param_groups[0]["params"]
        views: _Views = []
        for param, flat, grad in zip(params, self._params, self._grads, strict=True):
            tensors = [state.get(param, {}).get(name) for name in ("exp_avg", "exp_avg_sq", "step")]
            if not all(_host_float32(t) for t in tensors):
                return None
            exp_avg, exp_avg_sq, step = tensors
            views.append(
                (flat, grad, exp_avg.numpy().reshape(-1), exp_avg_sq.numpy().reshape(-1), step.view(1).numpy())
            )
        self._state, self._views = state, views
        return views


def is_plain_adam(optimizer: torch.optim.Optimizer) -> bool:
    """``torch.optim.Adam`` with one parameter group and none of the options that change its update
    (amsgrad, maximize, AdamW's decoupled decay, differentiable, capturable), lr and betas plain floats."""
    if not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    options = ("amsgrad", "maximize", "decoupled_weight_decay", "differentiable", "capturable")
    tensors = isinstance(group["lr"], torch.Tensor) or any(isinstance(b, torch.Tensor) for b in group["betas"])
    return not any(group.get(o) for o in options) and not tensors


def _host_float32(tensor: object) -> bool:
    return (
        isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and tensor.dtype == torch.float32
        and tensor.is_contiguous() and not tensor.requires_grad
    )  # fmt: skip


@compiled(
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " float64, float64, float64, float64, float64, float64)",
    error_model="numpy",
)
def _adam(
    param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, step: np.ndarray,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, grad_scale: float,
) -> None:  # pragma: no cover - compiled  # fmt: skip
    """torch's ``_fused_adam_`` on one float32 tensor (not amsgrad, not maximize), after ``step += 1``."""
    step[0] += np.float32(1.0)
    count = np.float64(step[0])
    bias_correction1 = 1.0 - beta1**count
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**count)
    step_size = np.float32(lr / bias_correction1)
    correction2 = np.float32(bias_correction2_sqrt)
    scale, decay, keep2 = np.float32(grad_scale), np.float32(weight_decay), np.float32(beta2)
    average_weight, square_weight, epsilon = np.float32(1.0 - beta1), np.float32(1.0 - beta2), np.float32(eps)
    small_weight = abs(1.0 - beta1) < 0.5
    for i in range(param.shape[0]):
        g = grad[i] * scale
        grad[i] = g
        p = param[i]
        if weight_decay != 0.0:
            g = g + p * decay
        m = exp_avg[i]
        if small_weight:
            m = m + average_weight * (g - m)
        else:
            m = g - (g - m) * (np.float32(1.0) - average_weight)
        v = exp_avg_sq[i] * keep2 + square_weight * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] = p - step_size * m / (np.sqrt(v) / correction2 + epsilon)
