"""The cut: one consistent state of every component, as a checkpoint saves it, and putting it back.

Both functions run on the device thread while the loop holds the checkpoint's lock, so no
inference, training or intake happens in between. The cut is each component's own
``state_dict()``; the offsets are added by the :class:`~stream_learner.checkpointing.checkpoint.Checkpoint`.

A checkpoint must fit the model settings (``model_spec``); the optimizer settings may change
between runs: the restored optimizer takes them, and each difference is logged as a warning
(``optimizer_changed``, ``optimizer_setting_changed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from stream_learner.config import Settings
from stream_learner.errors import CheckpointMismatchError
from stream_learner.learning.model_set import ModelSet
from stream_learner.learning.trainer import OptimizerChange, Trainer

log = structlog.get_logger(__name__)


class Part(Protocol):
    """A component whose state is in the cut."""

    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any, /) -> Any: ...


def model_spec(settings: Settings) -> dict[str, Any]:
    """What a checkpoint's model must match to be loaded under ``settings``."""
    spec: dict[str, Any] = {"task": settings.task, "input_dim": settings.input_dim, "output_dim": settings.output_dim}
    spec["model"] = settings.model
    if settings.task == "regression" and settings.model in ("linear", "mlp"):
        spec["target"] = "standardized"  # a regression model of before it learned in the target's own units
    return spec


def take_cut(
    trainer: Trainer | ModelSet, parts: Mapping[str, Part], spec: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    """The state of ``trainer`` and ``parts`` (by name), the model they fit, and a ``summary`` for people."""
    return {
        "model_spec": spec,
        "trainer": trainer.state_dict(),
        **{name: part.state_dict() for name, part in parts.items()},
        "summary": summary,
    }


def restore_cut(
    trainer: Trainer | ModelSet, parts: Mapping[str, Part], spec: dict[str, Any], state: dict[str, Any]
) -> None:
    """Load a :func:`take_cut` back; a checkpoint for another model shape raises
    :class:`CheckpointMismatchError`, one made with other optimizer settings loads under these."""
    saved = state["model_spec"]
    if saved != spec:
        diff = {k: (saved.get(k), spec[k]) for k in spec if saved.get(k) != spec[k]}
        raise CheckpointMismatchError(
            f"the newest checkpoint does not fit the settings (checkpoint vs settings: {diff}); "
            "point CHECKPOINT_DIR elsewhere to start a new model, or restore the old settings"
        )
    try:
        changes = trainer.load_state_dict(state["trainer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointMismatchError(f"the checkpoint's model state does not fit the model: {exc}") from exc
    for change in changes:
        _log_optimizer_change(change)
    if not isinstance(trainer, ModelSet) and state["trainer"].get("challengers"):
        dropped = sorted(state["trainer"]["challengers"])
        log.warning("challengers_dropped", models=dropped, detail="none configured now: the default model serves")
    for name, part in parts.items():
        part.load_state_dict(state[name])


def _log_optimizer_change(change: OptimizerChange) -> None:
    if change.setting == "optimizer":
        log.warning("optimizer_changed", old=change.old, new=change.new, model_weights="kept", optimizer_state="reset")
    else:
        log.warning("optimizer_setting_changed", setting=change.setting, old=change.old, new=change.new)
