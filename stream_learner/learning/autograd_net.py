"""A model's scores, loss and gradients by torch: its forward pass and autograd, on any device.

The library path of the trainer, for every model where :class:`~stream_learner.kernels.dense_net.DenseNet`
does not apply or ``CPU_KERNELS=off``; both have the same interface.

Guarantees:
- Scores come from the model in eval mode and under ``torch.inference_mode``; gradients from a
  forward pass in train mode (switched only when the mode changes, with ``model.train()`` where
  a module overrides it).
- The loss is the task's in float32: cross-entropy of class indices, or squared error of output 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class AutogradNet:
    """Scores, loss and gradients of ``model`` on ``device`` by torch's forward pass and autograd."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self._parameters = list(model.parameters())
        self._modules = list(model.modules())
        self._plain_modes = all(type(m).train is nn.Module.train for m in self._modules)
        """No module overrides ``train()``: switching modes only sets each module's ``training`` flag."""

    def scores(self, features: np.ndarray, softmax: bool) -> np.ndarray:
        """``[n, output_dim]`` float32: the model's output, or its softmax."""
        if self.model.training:
            self._set_training(False)
        with torch.inference_mode():
            out = self.model(self._to_device(features)).float()
            if softmax:
                out = torch.softmax(out, dim=1)
            scores: np.ndarray = out.cpu().numpy()
            return scores

    def loss_and_grads(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> tuple[float, float]:
        """The mean loss and the gradients' total L2 norm, with every parameter's ``grad`` set by autograd."""
        if not self.model.training:
            self._set_training(True)
        loss = _loss(self.model(self._to_device(features)), self._labels(labels), classification)
        self.discard_grads()
        torch.autograd.backward(loss)
        return self._loss_and_grad_norm(loss)

    def example_losses(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> np.ndarray:
        """Each example's own loss ``[n]``, by the weights the step's loss was computed with. In eval mode:
        a second forward pass in training mode would move batch-norm statistics again."""
        if self.model.training:
            self._set_training(False)
        with torch.no_grad():
            out = self.model(self._to_device(features))
            losses: np.ndarray = _loss(out, self._labels(labels), classification, reduction="none").cpu().numpy()
            return losses

    def discard_grads(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)``, without its profiler hooks."""
        for p in self._parameters:
            p.grad = None

    def _set_training(self, mode: bool) -> None:
        """``model.train(mode)``; without its recursion and ``nn.Module.__setattr__`` where no module
        overrides ``train()`` (every step and prediction switches)."""
        if not self._plain_modes:
            self.model.train(mode)
            return
        for module in self._modules:
            # private API: sets nn.Module.training where it lives, past train()'s recursion and __setattr__.
            module.__dict__["training"] = mode

    def _loss_and_grad_norm(self, loss: torch.Tensor) -> tuple[float, float]:
        """The loss and the gradients' total L2 norm, read back in one host sync.

        A non-finite loss gives non-finite gradients, so a finite norm alone does not clear a step.
        """
        grads = [p.grad for p in self._parameters if p.grad is not None]
        # torch's private one-kernel norm of every tensor, as clip_grad_norm_ uses it; every step here calls it.
        # private API: every gradient's norm in one dispatch (torch.nn.utils.get_total_norm needs torch 2.6).
        norms = torch._foreach_norm(grads) if grads else []
        values = torch.stack([loss.detach().float(), *(n.float() for n in norms)]).tolist()
        return values[0], math.sqrt(math.fsum(v * v for v in values[1:]))

    def _to_device(self, features: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def _labels(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels).to(self.device)


def _loss(out: torch.Tensor, labels: torch.Tensor, classification: bool, reduction: str = "mean") -> torch.Tensor:
    """The task's loss in float32: the mean, or each example's with ``reduction="none"``."""
    if classification:
        return nn.functional.cross_entropy(out.float(), labels.long(), reduction=reduction)
    return nn.functional.mse_loss(out[:, 0].float(), labels.float(), reduction=reduction)
