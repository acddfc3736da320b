"""Trainer: the model, its optimizer, and one optimizer step per batch of joined examples.

Guarantees:
- ``model_version`` counts the optimizer steps applied to the weights.
- Regression with a built-in model learns in standardized target units (the target's running mean and
  variance, in the model's state); predictions come out in the target's units, the loss (and so the
  guardrail and ``last_loss``) is in standardized units, whatever the target's scale.
- A step whose loss is not finite drops the examples whose own loss is not finite (counted in
  ``examples_skipped``; they leave no trace, in the standardizers' moments neither) and steps on
  the rest. A step that is still not finite then (every example dropped, none to drop, or a
  gradient that is not finite) is skipped (counted); the weights and the standardizers' moments
  stay as they were.
- A step whose loss spikes is treated as poisoned and skipped (counted), as
  :mod:`.guardrail` decides; the weights and the standardizers' moments stay as they were.
- The optimizer's kind, learning rate and weight decay are the settings', whatever a restored
  state held (:mod:`.optimizer`); :meth:`Trainer.load_state_dict` returns the differences.
- ``CPU_KERNELS=auto`` and ``off`` give the same steps up to float32 rounding and the same
  :meth:`Trainer.state_dict`, so a state saved under one loads under the other.
- Methods that touch torch must run on the device thread (:mod:`.device_thread`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.kernels.dense_net import DenseNet
from stream_learner.kernels.fused_adam import FusedAdamStep
from stream_learner.kernels.host_adam import HostAdam
from stream_learner.learning.autograd_net import AutogradNet
from stream_learner.learning.examples import Examples
from stream_learner.learning.guardrail import LossGuardrail
from stream_learner.learning.model import StandardizedModel
from stream_learner.learning.optimizer import OptimizerChange, OptimizerSpec, make_optimizer, restore_optimizer
from stream_learner.learning.standardizer import Moments

__all__ = ["OptimizerChange", "OptimizerSpec", "TrainCounters", "Trainer"]


class Net(Protocol):
    """How the trainer computes with its model: :class:`.DenseNet` (a kernel) or :class:`.AutogradNet` (torch)."""

    def scores(self, features: np.ndarray, softmax: bool) -> np.ndarray: ...

    def loss_and_grads(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> tuple[float, float]: ...

    def example_losses(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> np.ndarray: ...

    def discard_grads(self) -> None: ...


@dataclass
class TrainCounters:
    """Training totals since the service first started."""

    optimizer_steps: int = 0
    skipped_steps: int = 0
    examples_trained: int = 0
    examples_skipped: int = 0
    poisoned_steps: int = 0
    spikes_in_row: int = 0
    rollbacks: int = 0
    last_loss: float = math.nan


class Trainer:
    """Predicts with and learns into one model on one device."""

    def __init__(self, model: nn.Module, settings: Settings, device: torch.device) -> None:
        """Under ``settings.cpu_kernels == "auto"`` a model on the CPU that is a dense net steps with
        :mod:`.dense_net` and :mod:`.host_adam`, and a plain fused Adam steps with :mod:`.fused_adam`;
        otherwise, and for every other model, torch's autograd and ``optimizer.step()`` serve."""
        self.device = device
        self.classification = settings.task == "classification"
        self.grad_clip_norm = settings.grad_clip_norm
        self.guardrail = LossGuardrail.of(settings)
        self.model = model.to(device)
        self.optimizer_spec = OptimizerSpec.of(settings)
        self.optimizer = make_optimizer(settings, self.model)
        self.counters = TrainCounters()
        self._parameters = list(self.model.parameters())
        model = self.model
        self._standardizer = model.standardizer if isinstance(model, StandardizedModel) else None
        """Looked up once: ``nn.Module.__getattr__`` is slow on the step's path."""
        self._target = model.target if isinstance(model, StandardizedModel) and not self.classification else None
        kernels = settings.cpu_kernels == "auto"
        self._fused_adam = FusedAdamStep.of(self.optimizer) if kernels else None
        dense = DenseNet.of(self.model) if kernels and device.type == "cpu" else None
        self._net: Net = dense if dense is not None else AutogradNet(self.model, device)
        self._host_adam: HostAdam | None = None
        """The dense net's Adam update in a compiled loop, where the dense net and a plain fused Adam step."""
        if dense is not None and self._fused_adam is not None:
            self._host_adam = HostAdam(self.optimizer, dense.grad_views(self._parameters))

    @property
    def model_version(self) -> int:
        """Optimizer steps applied to the current weights."""
        return self.counters.optimizer_steps

    def predict_many(self, features: np.ndarray) -> np.ndarray:
        """Scores ``[n, output_dim]``: class probabilities, or the regression output in the target's units."""
        scores = self._net.scores(features, softmax=self.classification)
        if self._target is None:
            return scores
        mean, std = self._target.float32_mean_std()
        denormalized: np.ndarray = scores * std + mean
        return denormalized

    def learn_many(self, examples: Examples) -> float:
        """One optimizer step on ``examples``; returns the loss (NaN when the step was skipped).

        Where the loss is not finite, the step runs on the examples whose own loss is finite,
        and the others count as skipped (see the module's guarantees)."""
        features, labels = examples.features, examples.labels
        moments_before = self._moments()
        loss_value, norm_value, model_labels = self._loss_and_grads(features, labels)
        if not math.isfinite(loss_value):
            finite = np.isfinite(self._net.example_losses(features, model_labels, self.classification))
            if 0 < np.count_nonzero(finite) < len(labels):
                self._restore_moments(moments_before)
                features, labels = features[finite], labels[finite]
                loss_value, norm_value, _ = self._loss_and_grads(features, labels)
        poisoned = math.isfinite(loss_value) and self.guardrail.is_spike(loss_value, self.counters)
        if poisoned or not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self._net.discard_grads()
            self._restore_moments(moments_before)
            self.counters.poisoned_steps += int(poisoned)
            self.counters.skipped_steps += 1
            self.counters.examples_skipped += len(examples)
            return math.nan
        self.guardrail.accept(loss_value)
        self._step(norm_value)
        self.counters.optimizer_steps += 1
        self.counters.examples_trained += len(labels)
        self.counters.examples_skipped += len(examples) - len(labels)
        self.counters.last_loss = loss_value
        return loss_value

    def _loss_and_grads(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
        """The input standardizer's update with ``features``, then the loss (for regression, in standardized
        target units) and the gradients' norm, every ``grad`` set; and the labels as the loss saw them."""
        if self._standardizer is not None:
            self._standardizer.update(features)
        model_labels = self._in_model_units(labels)
        return (*self._net.loss_and_grads(features, model_labels, self.classification), model_labels)

    def _in_model_units(self, labels: np.ndarray) -> np.ndarray:
        """Regression labels standardized by the target's moments of before them (test-then-train: an
        outlandish batch stands out to the guardrail); the moments then take them in."""
        target = self._target
        if target is None:
            return labels
        mean, std = target.float32_mean_std()
        standardized: np.ndarray = ((labels - mean[0]) / std[0]).astype(np.float32, copy=False)
        target.update(labels.reshape(-1, 1))
        return standardized

    def _moments(self) -> tuple[Moments | None, Moments | None]:
        """The moments of the input and target standardizers (None where there is none), to put back."""
        return (
            self._standardizer.moments() if self._standardizer is not None else None,
            self._target.moments() if self._target is not None else None,
        )

    def _restore_moments(self, moments: tuple[Moments | None, Moments | None]) -> None:
        for standardizer, saved in zip((self._standardizer, self._target), moments, strict=True):
            if standardizer is not None and saved is not None:
                standardizer.restore_moments(saved)

    def _step(self, grad_norm: float) -> None:
        """The optimizer's step, the gradients clipped to ``grad_clip_norm`` first."""
        scale = _clip_coefficient(self.grad_clip_norm, grad_norm)
        if self._host_adam is not None and self._host_adam.step(scale):
            return
        if scale < 1.0:
            nn.utils.clip_grads_with_norm_(self._parameters, self.grad_clip_norm, torch.tensor(grad_norm))
        if self._fused_adam is None or not self._fused_adam.step():
            self.optimizer.step()

    def rollback(self, state: dict[str, Any]) -> None:
        """Put back the weights and optimizer of a :meth:`state_dict`; totals keep counting.

        ``model_version`` returns to the restored weights' step count; ``state`` is left as it was.
        The optimizer keeps the settings' kind and hyper-parameters (as :meth:`load_state_dict`).
        """
        self.model.load_state_dict(state["model"])
        restore_optimizer(self.optimizer, state, self.optimizer_spec)
        self.guardrail.restore(state.get("recent_losses", []))
        self.counters.optimizer_steps = int(state["counters"]["optimizer_steps"])
        self.counters.spikes_in_row = 0
        self.counters.rollbacks += 1

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's ``state_dict`` (its standardizer's moments included) copied to the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Model and optimizer state copied to CPU, the optimizer's spec, plus the counters."""
        return {
            "model": self.weights(),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "optimizer_spec": self.optimizer_spec.as_dict(),
            "recent_losses": list(self.guardrail.recent_losses),
            "counters": dict(vars(self.counters)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[OptimizerChange]:
        """Restore a :meth:`state_dict` onto this trainer's device; ``state`` is left as it was.

        Returns where the restored optimizer differed from the settings (the settings won, see
        :func:`.optimizer.restore_optimizer`); the caller reports them."""
        self.model.load_state_dict(state["model"])
        changes = restore_optimizer(self.optimizer, state, self.optimizer_spec)
        self.counters = TrainCounters(**state["counters"])
        self.guardrail.restore(state.get("recent_losses", []))
        return changes


def _clip_coefficient(max_norm: float, norm: float) -> float:
    """What ``clip_grads_with_norm_`` multiplies the gradients by (computed as it does, in float32), at most 1."""
    if norm <= max_norm:
        return 1.0
    return min(float(np.float32(max_norm) / (np.float32(norm) + np.float32(1e-6))), 1.0)


def _to_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
