"""Adam's step through torch's fused kernel on the optimizer's own state, past ``Optimizer.step``'s wrappers.

``Optimizer.step``'s Python wrappers (profiler hooks, compile guards, per-group bookkeeping) hold
the GIL for as long as the rest of a small model's step. :class:`FusedAdamStep` calls the kernel
that a fused ``torch.optim.Adam`` calls, with the same arguments.

Guarantees:
- The kernel and its arguments are those of ``torch.optim.adam._fused_adam``; the state tensors
  (``step``, ``exp_avg``, ``exp_avg_sq``) are the optimizer's, so the weights and state equal those
  of ``optimizer.step()`` (``tests/test_training.py`` compares them) and checkpoints are unchanged.
- :meth:`FusedAdamStep.step` does nothing and returns False for the first step (which creates the
  state) and while a parameter has no gradient; the caller takes ``optimizer.step()`` then.
- It uses torch's private ``torch._fused_adam_`` and ``torch._foreach_add_``: :meth:`FusedAdamStep.of`
  gives None where torch lacks the first, and the test above asserts that it does not.
"""

from __future__ import annotations

from typing import Any

import torch

from stream_learner.kernels.host_adam import is_plain_adam


class FusedAdamStep:
    """Steps a plain, fused, single-group ``torch.optim.Adam`` whose parameters share one device and dtype."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> FusedAdamStep | None:
        """The direct step of ``optimizer``, or None where it is not a plain fused Adam
        (:func:`.host_adam.is_plain_adam`) over parameters of one device and dtype, or torch has no ``_fused_adam_``."""
        if not is_plain_adam(optimizer) or not hasattr(torch, "_fused_adam_"):
            return None
        group = optimizer.param_groups[0]
        same = len({(p.device, p.dtype) for p in group["params"]}) == 1
        return cls(optimizer) if group.get("fused") and same else None

    def step(self) -> bool:
        """One Adam step of every parameter by its ``grad``; False, doing nothing, where it does not apply."""
        group = self.optimizer.param_groups[0]
        params: list[torch.Tensor] = group["params"]
        states: list[dict[str, Any]] = [self.optimizer.state.get(p, {}) for p in params]
        grads = [p.grad for p in params if p.grad is not None]
        if not all(states) or len(grads) != len(params):
            return False
        steps = [state["step"] for state in states]
        # private API: the kernels a fused torch.optim.Adam calls, without Optimizer.step's wrappers.
        torch._foreach_add_(steps, 1)  # one dispatch for every step counter, as the optimizer does
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params, grads, [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states], [], steps,
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return True
