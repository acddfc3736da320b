"""Exactly-once delivery: which checkpoint to restore, by the offsets the last committed transaction carried.

The transactions themselves are :mod:`stream_learner.kafka.librdkafka.transactions` (KAFKA_CLIENT=librdkafka).

With ``delivery=exactly_once``, beside the steps of :meth:`stream_learner.checkpointing.checkpoint.Checkpoint.commit`:

- **Start.** The transactional producer starts first: its InitProducerId fences any earlier
  producer with the same transactional id, and the coordinator aborts (or finishes) that
  producer's open transaction, before anything is read. Then the group's committed offsets
  are read, and the newest checkpoint whose offsets equal them is restored
  (:func:`choose_checkpoint`).
- **Between checkpoints** every record the service produces goes into the open transaction,
  begun at the first send after a checkpoint.
- **Checkpoint step 5** adds the checkpoint's offsets to the transaction and commits it.

A crash between step 4 (file written) and that commit leaves a checkpoint newer than the
committed offsets. The next start aborts its transaction (fencing) and falls back to the
checkpoint before it, so the aborted predictions are made again, and a ``read_committed``
consumer sees each prediction once. Training is unaffected: replay from a checkpoint makes
the same steps (see :mod:`stream_learner.learning.schedule`).

Fencing: the transactional id is one per consumer group (``stream-learner.<GROUP_ID>``), so a new
instance fences the previous one (a rolling restart); the offsets also carry the consumer's group
metadata (KIP-447), so a member the group has moved past cannot commit either. Run one instance
per group in this mode (the model is one per group anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import structlog
from aiokafka import TopicPartition

from stream_learner.checkpointing.store import LoadedCheckpoint, from_topics
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError

log = structlog.get_logger(__name__)

Offsets = Mapping[TopicPartition, int]


async def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """The group's committed offsets on the events and labels topics (partitions without one left out),
    read by a librdkafka consumer of the group that joins nothing (exactly_once runs on librdkafka)."""
    from stream_learner.kafka.librdkafka.committed import read_committed_offsets

    found = await asyncio.to_thread(read_committed_offsets, settings, [settings.events_topic, settings.labels_topic])
    return {tp: offset for tp, offset in found.items() if offset >= 0}


def choose_checkpoint(newest_first: Iterable[LoadedCheckpoint], committed: Offsets) -> LoadedCheckpoint | None:
    """The newest checkpoint whose transaction committed: its offsets equal the group's committed offsets.

    None (start fresh) when nothing was ever committed. Raises :class:`CheckpointError` when offsets
    were committed but no checkpoint matches them (checkpoints deleted, or another writer).
    """
    candidates = list(newest_first)
    if not committed:
        if candidates:
            log.warning("checkpoints_without_committed_transaction", skipped=[str(c.path) for c in candidates])
        return None
    for checkpoint in candidates:
        offsets = from_topics(checkpoint.state["offsets"])
        if offsets == dict(committed):
            return checkpoint
        log.warning("checkpoint_not_committed", path=str(checkpoint.path), reason="its transaction did not commit")
    raise CheckpointError(
        f"no checkpoint matches the group's committed offsets {_describe(committed)}; "
        "the checkpoints were deleted or another writer committed for this group. "
        "Restore the checkpoint directory, or start a new GROUP_ID."
    )


def _describe(offsets: Offsets) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]={o}" for tp, o in sorted(offsets.items()))
