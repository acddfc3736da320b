"""A checkpoint's state of an in-process Service, taken and put back the way its Checkpoint does."""

from __future__ import annotations

from typing import Any

from stream_learner.checkpointing.cut import model_spec, restore_cut, take_cut
from stream_learner.checkpointing.store import by_topic
from stream_learner.service import Service


def snapshot_state(service: Service) -> dict[str, Any]:
    """The cut a checkpoint of ``service`` would save now (call it where no step runs)."""
    learner = service.learner
    state = take_cut(
        learner.trainer, learner.parts(service.totals), model_spec(service.settings), service.status.stats()
    )
    state["offsets"] = by_topic(service.checkpoint.offsets)
    return state


def restore_state(service: Service, state: dict[str, Any]) -> None:
    """Put a :func:`snapshot_state` back into ``service``."""
    learner = service.learner
    restore_cut(learner.trainer, learner.parts(service.totals), model_spec(service.settings), state)
