"""The state a checkpoint carries, and putting it back.

Both functions run on the device thread while the service holds its lock, so
the cut is consistent: no inference, training or intake happens in between.

A checkpoint must fit the model settings (:func:`model_spec`); the optimizer settings may
change between runs: the restored optimizer takes them, and each difference is logged as a
warning (``optimizer_changed``, ``optimizer_setting_changed``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import TopicPartition

from stream_learner.errors import CheckpointMismatchError
from stream_learner.learning.trainer import OptimizerChange

if TYPE_CHECKING:
    from stream_learner.service import Service

log = structlog.get_logger(__name__)


def model_spec(service: Service) -> dict[str, Any]:
    """What a checkpoint's model must match to be loaded into this service."""
    s = service.settings
    return {"task": s.task, "input_dim": s.input_dim, "output_dim": s.output_dim, "model": s.model}


def snapshot_state(service: Service) -> dict[str, Any]:
    """One consistent cut: model, optimizer, join, queued examples, metrics, counters, offsets."""
    offsets: dict[str, dict[int, int]] = {}
    for tp, offset in sorted(service.offsets.items()):
        offsets.setdefault(tp.topic, {})[tp.partition] = offset
    return {
        "model_spec": model_spec(service),
        "trainer": service.trainer.state_dict(),
        "join": service.join.state_dict(),
        "schedule": service.schedule.state_dict(),
        "metrics": service.metrics.state_dict(),
        "counters": dict(service.counters),
        "summary": service.stats(),
        "offsets": offsets,
    }


def restore_state(service: Service, state: dict[str, Any]) -> None:
    """Load a :func:`snapshot_state` into ``service``; a checkpoint for another model shape is an error,
    one made with other optimizer settings is loaded under this service's (each difference logged)."""
    saved, wanted = state["model_spec"], model_spec(service)
    if saved != wanted:
        diff = {k: (saved.get(k), wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
        raise CheckpointMismatchError(
            f"the newest checkpoint does not fit the settings (checkpoint vs settings: {diff}); "
            "point CHECKPOINT_DIR elsewhere to start a new model, or restore the old settings"
        )
    try:
        changes = service.trainer.load_state_dict(state["trainer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointMismatchError(f"the checkpoint's model state does not fit the model: {exc}") from exc
    for change in changes:
        _log_optimizer_change(change)
    service.join.load_state_dict(state["join"])
    service.schedule.load_state_dict(state["schedule"])
    service.metrics.load_state_dict(state["metrics"])
    service.counters.clear()
    service.counters.update(state["counters"])
    service.offsets = {
        TopicPartition(topic, int(partition)): int(offset)
        for topic, parts in state["offsets"].items()
        for partition, offset in parts.items()
    }


def _log_optimizer_change(change: OptimizerChange) -> None:
    if change.setting == "optimizer":
        log.warning("optimizer_changed", old=change.old, new=change.new, model_weights="kept", optimizer_state="reset")
    else:
        log.warning("optimizer_setting_changed", setting=change.setting, old=change.old, new=change.new)
