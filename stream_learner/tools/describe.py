"""A checkpoint described for people and tools (``stream-learner checkpoint show``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from stream_learner.checkpointing.store import CheckpointStore


def describe_latest(store: CheckpointStore) -> dict[str, Any] | None:
    """The newest readable checkpoint's identity, counters, metrics and offsets; None if there is none."""
    loaded = store.load_latest()
    if loaded is None:
        return None
    state = loaded.state
    summary = dict(state["summary"])
    return {
        "checkpoint_id": loaded.checkpoint_id,
        "path": str(loaded.path),
        "created_at": datetime.fromtimestamp(state["created_at"], UTC).isoformat(),
        "model": state["model_spec"],
        "model_version": summary.pop("model_version"),
        "events_predicted": summary.pop("events_predicted"),
        "labels_joined": summary.pop("labels_joined"),
        "examples_trained": summary.pop("examples_trained"),
        "pending_events": summary.pop("pending_events"),
        **{k: v for k, v in summary.items() if k != "lag"},
        "offsets": {topic: {str(p): o for p, o in parts.items()} for topic, parts in state["offsets"].items()},
    }
