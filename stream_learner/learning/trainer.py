"""Trainer: the model, its optimizer and the queue of joined examples awaiting a step.

Guarantees:
- ``model_version`` counts the optimizer steps applied to the weights.
- A step whose loss is not finite drops the examples whose own loss is not finite (counted in
  ``examples_skipped``; they leave no trace, in the standardizer's moments neither) and steps on
  the rest. A step that is still not finite then (every example dropped, none to drop, or a
  gradient that is not finite) is skipped (counted); the weights and the standardizer's moments
  stay as they were.
- A step whose loss spikes above ``loss_spike_factor`` x the recent median (and above the
  loss of a uniform guess) is treated as poisoned and skipped (counted). After
  ``MAX_SPIKES_IN_ROW`` such steps in a row the new loss level is accepted as a real
  change of regime (concept drift), so the guardrail cannot freeze the model.
- The optimizer's kind, learning rate and weight decay are the settings', whatever a restored
  state held (:meth:`Trainer.load_state_dict`, :meth:`Trainer.rollback`): a changed learning rate or
  weight decay is set on the restored optimizer state; a state of another kind of optimizer is not
  loaded, and the optimizer starts afresh on the restored weights. Both are reported
  (:class:`OptimizerChange`). A state records its :class:`OptimizerSpec`; one written before it did
  has the spec read from its optimizer's parameter group.
- Methods that touch torch must run on the device thread (:mod:`stream_learner.device`).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.kernels.dense_net import DenseNet
from stream_learner.kernels.host_adam import HostAdam, is_plain_adam
from stream_learner.learning.join import Examples
from stream_learner.learning.model import StandardizedModel

RECENT_LOSSES = 100
MIN_LOSSES_FOR_SPIKES = 20
MAX_SPIKES_IN_ROW = 10

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
}


@dataclass(frozen=True)
class OptimizerSpec:
    """What the settings choose of the optimizer: its kind and the hyper-parameters they set."""

    kind: str
    """adam, sgd or adagrad (``unknown`` for a saved optimizer that is none of them)."""
    learning_rate: float
    weight_decay: float

    @classmethod
    def of(cls, settings: Settings) -> OptimizerSpec:
        """The spec the settings ask for."""
        return cls(settings.optimizer, settings.effective_learning_rate, settings.weight_decay)

    @classmethod
    def saved_in(cls, state: dict[str, Any]) -> OptimizerSpec:
        """The spec a :meth:`Trainer.state_dict` was made with: the one it records, or, in a state
        written before states recorded it, the one its optimizer's first parameter group shows."""
        spec = state.get("optimizer_spec")
        if isinstance(spec, dict):
            return cls(str(spec["kind"]), float(spec["learning_rate"]), float(spec["weight_decay"]))
        group = state["optimizer"]["param_groups"][0]
        return cls(_kind_of(group), float(group["lr"]), float(group["weight_decay"]))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, as a checkpoint holds them (``torch.load(weights_only=True)`` reads them)."""
        return asdict(self)


@dataclass(frozen=True)
class OptimizerChange:
    """A setting of the optimizer that a restored state held otherwise: the settings' value won."""

    setting: str
    """``optimizer`` (the kind: the state was not loaded), ``learning_rate`` or ``weight_decay``."""
    old: str | float
    """The restored state's value."""
    new: str | float
    """The settings' value, now in force."""


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

    def __init__(self, model: nn.Module, settings: Settings, device: torch.device, host_kernels: bool = True) -> None:
        """``host_kernels``: step a dense net with :mod:`.dense_net` and :mod:`.host_adam` where it is
        one; False keeps torch's autograd and optimizer for every model (what tests compare against)."""
        self.device = device
        self.task = settings.task
        self.grad_clip_norm = settings.grad_clip_norm
        self.loss_spike_factor = settings.loss_spike_factor
        self.loss_floor = math.log(settings.num_classes) if settings.task == "classification" else 1e-8
        self.recent_losses: deque[float] = deque(maxlen=RECENT_LOSSES)
        self.model = model.to(device)
        self.optimizer_spec = OptimizerSpec.of(settings)
        self.optimizer = _make_optimizer(settings, self.model)
        self.counters = TrainCounters()
        self._direct_adam = _takes_direct_fused_adam(self.optimizer)
        self._parameters = list(self.model.parameters())
        self._modules = list(self.model.modules())
        self._standardizer = self.model.standardizer if isinstance(self.model, StandardizedModel) else None
        """Looked up once: ``nn.Module.__getattr__`` costs 5 µs, a step's worth of a kernel."""
        self._plain_modes = all(type(m).train is nn.Module.train for m in self._modules)
        """No module overrides ``train()``: switching modes only sets each module's ``training`` flag."""
        self._dense = DenseNet.of(self.model) if device.type == "cpu" and host_kernels else None
        """The model as a dense net computed without autograd, where it is one (:mod:`.dense_net`)."""
        self._host_adam: HostAdam | None = None
        """The dense net's Adam update in a compiled loop (:mod:`.host_adam`)."""
        if self._dense is not None and self._direct_adam:
            self._host_adam = HostAdam(self.optimizer, self._dense.grad_views(self._parameters))  # type: ignore[arg-type]

    @property
    def model_version(self) -> int:
        """Optimizer steps applied to the current weights."""
        return self.counters.optimizer_steps

    def predict_many(self, features: np.ndarray) -> np.ndarray:
        """Scores ``[n, output_dim]``: class probabilities, or the regression output."""
        if self._dense is not None:
            return self._dense.scores(features, softmax=self.task == "classification")
        if self.model.training:
            self._set_training(False)
        with torch.inference_mode():
            out = self.model(self._to_device(features))
            if self.task == "classification":
                out = torch.softmax(out.float(), dim=1)
            return out.float().cpu().numpy()

    def learn_many(self, examples: Examples) -> float:
        """One optimizer step on ``examples``; returns the loss (NaN when the step was skipped).

        Where the loss is not finite, the step runs on the examples whose own loss is finite,
        and the others count as skipped (see the module's guarantees)."""
        features, labels = examples.features, examples.labels
        standardizer = self._standardizer
        moments_before = standardizer.moments() if standardizer is not None else None
        loss_value, norm_value = self._loss_and_grads(features, labels)
        if not math.isfinite(loss_value):
            finite = self._finite_example_losses(features, labels)
            if 0 < np.count_nonzero(finite) < len(labels):
                if standardizer is not None and moments_before is not None:
                    standardizer.restore_moments(moments_before)
                features, labels = features[finite], labels[finite]
                loss_value, norm_value = self._loss_and_grads(features, labels)
        poisoned = math.isfinite(loss_value) and self._is_spike(loss_value)
        if poisoned or not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            if self._dense is None:  # the dense net's buffers stay attached, and its next step overwrites them
                self._clear_grads()
            if standardizer is not None and moments_before is not None:
                standardizer.restore_moments(moments_before)
            self.counters.poisoned_steps += int(poisoned)
            return self._skip(len(examples))
        self.recent_losses.append(loss_value)
        self._step(norm_value)
        self.counters.optimizer_steps += 1
        self.counters.examples_trained += len(labels)
        self.counters.examples_skipped += len(examples) - len(labels)
        self.counters.last_loss = loss_value
        return loss_value

    def _loss_and_grads(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """The standardizer's update with ``features``, then the loss and the gradients' total norm, every ``grad`` set."""
        if self._standardizer is not None:
            self._standardizer.update(features)
        if self._dense is not None:
            return self._dense.loss_and_grads(features, labels, self.task == "classification")
        return self._loss_and_grads_by_autograd(features, labels)

    def _finite_example_losses(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Which examples' own loss is finite in float32 (a bool per example), by the weights and
        standardizer the step's loss was computed with. Only for a step whose loss is not finite."""
        if self._dense is not None:
            return np.isfinite(self._dense.example_losses(features, labels, self.task == "classification"))
        if self.model.training:  # a second forward pass in training mode would move batch-norm statistics again
            self._set_training(False)
        with torch.no_grad():
            losses = self._loss(
                self.model(self._to_device(features)), torch.from_numpy(labels).to(self.device), reduction="none"
            )
            return torch.isfinite(losses).cpu().numpy()

    def _step(self, grad_norm: float) -> None:
        """The optimizer's step, the gradients clipped to ``grad_clip_norm`` first."""
        scale = _clip_coefficient(self.grad_clip_norm, grad_norm)
        if self._host_adam is not None and self._host_adam.step(scale):
            return
        if scale < 1.0:
            nn.utils.clip_grads_with_norm_(self._parameters, self.grad_clip_norm, torch.tensor(grad_norm))
        if not self._step_fused_adam_directly():
            self.optimizer.step()

    def _loss_and_grads_by_autograd(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """The loss and the gradients' total norm, with every parameter's ``grad`` set by autograd."""
        if not self.model.training:
            self._set_training(True)
        x = self._to_device(features)
        loss = self._loss(self.model(x), torch.from_numpy(labels).to(self.device))
        self._clear_grads()
        loss.backward()
        return self._loss_and_grad_norm(loss)

    def _set_training(self, mode: bool) -> None:
        """``model.train(mode)``; without its recursion and ``nn.Module.__setattr__`` where no module
        overrides ``train()`` (those cost 60 us a switch, and every step and prediction switches)."""
        if not self._plain_modes:
            self.model.train(mode)
            return
        for module in self._modules:
            module.__dict__["training"] = mode

    def _clear_grads(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)`` without its profiler hooks."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def _step_fused_adam_directly(self) -> bool:
        """The fused Adam kernel on the optimizer's own state tensors; False where it does not apply.

        ``Optimizer.step``'s Python wrappers (profiler hooks, compile guards, per-group
        bookkeeping) cost about 150 us a step here, as much as the rest of a small model's
        step, all of it holding the GIL. The kernel and its arguments are those of
        ``torch.optim.adam._fused_adam``; the state tensors (``step``, ``exp_avg``,
        ``exp_avg_sq``) are the optimizer's, so its ``state_dict`` and checkpoints are unchanged.
        The first step (which creates the state) and a parameter without a gradient take ``step()``.
        """
        if not self._direct_adam:
            return False
        group = self.optimizer.param_groups[0]
        params = group["params"]
        states = [self.optimizer.state.get(p) for p in params]
        if not all(states) or any(p.grad is None for p in params):
            return False
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params, [p.grad for p in params], [state["exp_avg"] for state in states],
            [state["exp_avg_sq"] for state in states], [], steps,
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return True

    def _loss_and_grad_norm(self, loss: torch.Tensor) -> tuple[float, float]:
        """The loss and the gradients' total L2 norm, read back in one host sync.

        A non-finite loss gives non-finite gradients, so a finite norm alone does not clear a step.
        """
        grads = [p.grad for p in self._parameters if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        values = torch.stack([loss.detach().float(), *(n.float() for n in norms)]).tolist()
        return values[0], math.sqrt(math.fsum(v * v for v in values[1:]))

    def _is_spike(self, loss: float) -> bool:
        """A poisoned-looking loss; the MAX_SPIKES_IN_ROW-th in a row is accepted as a new regime."""
        if len(self.recent_losses) < MIN_LOSSES_FOR_SPIKES:
            return False
        baseline = max(statistics.median(self.recent_losses), self.loss_floor)
        if loss <= self.loss_spike_factor * baseline:
            self.counters.spikes_in_row = 0
            return False
        if self.counters.spikes_in_row + 1 >= MAX_SPIKES_IN_ROW:
            self.counters.spikes_in_row = 0
            self.recent_losses.clear()
            return False
        self.counters.spikes_in_row += 1
        return True

    def rollback(self, state: dict[str, object]) -> None:
        """Put back the weights and optimizer of a :meth:`state_dict`; totals keep counting.

        ``model_version`` returns to the restored weights' step count; ``state`` is left as it was.
        The optimizer keeps the settings' kind and hyper-parameters (as :meth:`load_state_dict`).
        """
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self._load_optimizer(state)
        self.recent_losses = deque(state.get("recent_losses", []), maxlen=RECENT_LOSSES)  # type: ignore[call-overload]
        self.counters.optimizer_steps = int(state["counters"]["optimizer_steps"])  # type: ignore[index]
        self.counters.spikes_in_row = 0
        self.counters.rollbacks += 1

    def _load_optimizer(self, state: dict[str, Any]) -> list[OptimizerChange]:
        """The optimizer state of ``state`` (a :meth:`state_dict`) under the settings' spec; returns what differed.

        Another kind of optimizer's state is not loaded: this one's state starts empty (its first
        step creates it, as on a fresh start). Otherwise ``optimizer.load_state_dict`` runs on a copy
        (it keeps the given tensors where their device and dtype already fit, and the steps would then
        change the state the caller keeps: the guardrail's last good one, or a checkpoint still being
        written), and the learning rate and weight decay it restored are set back to the settings'.
        """
        saved, wanted = OptimizerSpec.saved_in(state), self.optimizer_spec
        if saved.kind != wanted.kind:
            self.optimizer.state = defaultdict(dict)
            return [OptimizerChange("optimizer", saved.kind, wanted.kind)]
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = wanted.learning_rate, wanted.weight_decay
        differences = (
            ("learning_rate", saved.learning_rate, wanted.learning_rate),
            ("weight_decay", saved.weight_decay, wanted.weight_decay),
        )
        return [OptimizerChange(name, old, new) for name, old, new in differences if old != new]

    def _loss(self, out: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The task's loss in float32: the mean, or each example's with ``reduction="none"``."""
        if self.task == "classification":
            return nn.functional.cross_entropy(out.float(), labels.long(), reduction=reduction)
        return nn.functional.mse_loss(out[:, 0].float(), labels.float(), reduction=reduction)

    def _skip(self, count: int) -> float:
        self.counters.skipped_steps += 1
        self.counters.examples_skipped += count
        return math.nan

    def _to_device(self, features: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x

    def state_dict(self) -> dict[str, object]:
        """Model and optimizer state copied to CPU, the optimizer's spec, plus the counters."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "optimizer_spec": self.optimizer_spec.as_dict(),
            "recent_losses": list(self.recent_losses),
            "counters": dict(vars(self.counters)),
        }

    def load_state_dict(self, state: dict[str, object]) -> list[OptimizerChange]:
        """Restore a :meth:`state_dict` onto this trainer's device; ``state`` is left as it was.

        Returns where the restored optimizer differed from the settings (the settings won, see
        :meth:`_load_optimizer`); the caller reports them."""
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        changes = self._load_optimizer(state)
        self.counters = TrainCounters(**state["counters"])  # type: ignore[arg-type]
        self.recent_losses = deque(state.get("recent_losses", []), maxlen=RECENT_LOSSES)  # type: ignore[call-overload]
        return changes


def _clip_coefficient(max_norm: float, norm: float) -> float:
    """What ``clip_grads_with_norm_`` multiplies the gradients by (computed as it does, in float32), at most 1."""
    if norm <= max_norm:
        return 1.0
    return min(float(np.float32(max_norm) / (np.float32(norm) + np.float32(1e-6))), 1.0)


def _make_optimizer(settings: Settings, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel for all parameters) where torch supports it here.

    A fused step is about a third cheaper on small models; a model whose parameters the
    fused kernels do not take (e.g. float64) gets the default implementation.
    """
    kind = OPTIMIZERS[settings.optimizer]
    kwargs = {"lr": settings.effective_learning_rate, "weight_decay": settings.weight_decay}
    params = list(model.parameters())
    if all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        try:
            return kind(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return kind(params, **kwargs)


_KIND_MARKS = {"adam": "betas", "sgd": "momentum", "adagrad": "lr_decay"}
"""A parameter-group key of each kind of optimizer that the other kinds' groups lack."""


def _kind_of(group: dict[str, Any]) -> str:
    """The kind of optimizer a saved parameter group belongs to, or ``unknown``."""
    return next((kind for kind, mark in _KIND_MARKS.items() if mark in group), "unknown")


def _takes_direct_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """A plain fused Adam (:func:`.host_adam.is_plain_adam`) over same-device, same-dtype parameters."""
    if not is_plain_adam(optimizer) or not hasattr(torch, "_fused_adam_"):
        return False
    group = optimizer.param_groups[0]
    same = len({(p.device, p.dtype) for p in group["params"]}) == 1
    return bool(group.get("fused")) and same


def _to_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
