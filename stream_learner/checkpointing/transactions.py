"""Exactly-once delivery: predictions, dead letters and offsets in one Kafka transaction per checkpoint.

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

Fencing: aiokafka sends no group metadata with the offsets (no KIP-447; aio-libs/aiokafka#844),
so a producer cannot be fenced by consumer-group generation. The transactional id is one per
consumer group instead (``stream-learner.<GROUP_ID>``): the whole group is one transactional
writer, and a new instance fences the previous one. In this mode run one instance per group
(the model is one per group anyway); a second instance makes the first fail with
``ProducerFenced``, which is what a rolling restart needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from stream_learner.checkpointing.store import LoadedCheckpoint, from_topics
from stream_learner.config import Settings
from stream_learner.errors import BrokerCapabilityError, CheckpointError
from stream_learner.kafka.clients import security_kwargs

log = structlog.get_logger(__name__)

Offsets = Mapping[TopicPartition, int]


class Transactions:
    """The open transaction of a transactional producer: begun lazily, committed with offsets."""

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self.producer = producer
        self.group_id = group_id
        self.open = False

    async def start(self) -> None:
        """Start the producer (InitProducerId: fences earlier producers with the same id)."""
        try:
            await self.producer.start()
        except KafkaConnectionError:
            raise  # the broker is not there (yet): not a missing capability
        except Exception as exc:
            raise BrokerCapabilityError(
                f"delivery=exactly_once: the broker refused the transactional producer ({type(exc).__name__}: {exc}). "
                "It needs Kafka transactions (Apache Kafka 0.11 or later; the embedded Tansu broker has none). "
                "Use delivery=at_least_once with this broker."
            ) from exc

    async def begin(self) -> None:
        """Open a transaction unless one is open."""
        if not self.open:
            await self.producer.begin_transaction()
            self.open = True

    async def commit(self, offsets: Offsets) -> None:
        """Add ``offsets`` (the next offset to read, per partition) to the transaction and commit it."""
        await self.begin()
        if offsets:
            await self.producer.send_offsets_to_transaction(dict(offsets), self.group_id)
        await self.producer.commit_transaction()
        self.open = False


async def committed_offsets(settings: Settings) -> dict[TopicPartition, int]:
    """The group's committed offsets on the events and labels topics (partitions without one left out)."""
    admin = AIOKafkaAdminClient(
        **security_kwargs(settings), bootstrap_servers=settings.bootstrap_servers, client_id=settings.client_id
    )
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(settings.group_id)
    finally:
        await admin.close()
    topics = {settings.events_topic, settings.labels_topic}
    return {tp: meta.offset for tp, meta in found.items() if tp.topic in topics and meta.offset >= 0}


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
