"""The optimizer: built from the settings, and restored from a saved state under the settings' choice.

Guarantees:
- The optimizer's kind, learning rate and weight decay are the settings', whatever a restored
  state held (:func:`restore_optimizer`): a changed learning rate or weight decay is set on the
  restored optimizer state; a state of another kind of optimizer is not loaded, and the optimizer
  starts afresh. Both are reported (:class:`OptimizerChange`).
- A state records its :class:`OptimizerSpec`; one written before it did has the spec read from
  its optimizer's parameter group.
- A restore never changes the state it was given (the steps after it change copies).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from stream_learner.config import Settings

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
}

_KIND_MARKS = {"adam": "betas", "sgd": "momentum", "adagrad": "lr_decay"}
"""A parameter-group key of each kind of optimizer that the other kinds' groups lack."""


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
        """The spec a trainer's ``state_dict()`` was made with: the one it records, or, in a state
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


def make_optimizer(settings: Settings, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel for all parameters) where torch supports it here;
    a model whose parameters the fused kernels do not take (e.g. float64) gets the default implementation."""
    kind = OPTIMIZERS[settings.optimizer]
    options: dict[str, Any] = {"lr": settings.effective_learning_rate, "weight_decay": settings.weight_decay}
    params = list(model.parameters())
    if all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        try:
            return kind(params, fused=True, **options)  # type: ignore[call-arg]  # each of OPTIMIZERS takes fused
        except (RuntimeError, TypeError, ValueError):
            pass
    return kind(params, **options)


def restore_optimizer(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], wanted: OptimizerSpec
) -> list[OptimizerChange]:
    """The optimizer state of ``state`` (a trainer's ``state_dict()``) under the spec ``wanted``; returns what differed.

    Another kind of optimizer's state is not loaded: this one's state starts empty (its first
    step creates it, as on a fresh start). Otherwise ``optimizer.load_state_dict`` runs on a copy
    (it keeps the given tensors where their device and dtype already fit, and the steps would then
    change the state the caller keeps: the guardrail's last good one, or a checkpoint still being
    written), and the learning rate and weight decay it restored are set back to the wanted ones.
    """
    saved = OptimizerSpec.saved_in(state)
    if saved.kind != wanted.kind:
        optimizer.state = defaultdict(dict)
        return [OptimizerChange("optimizer", saved.kind, wanted.kind)]
    optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = wanted.learning_rate, wanted.weight_decay
    differences = (
        ("learning_rate", saved.learning_rate, wanted.learning_rate),
        ("weight_decay", saved.weight_decay, wanted.weight_decay),
    )
    return [OptimizerChange(name, old, new) for name, old, new in differences if old != new]


def _kind_of(group: dict[str, Any]) -> str:
    """The kind of optimizer a saved parameter group belongs to, or ``unknown``."""
    return next((kind for kind, mark in _KIND_MARKS.items() if mark in group), "unknown")
