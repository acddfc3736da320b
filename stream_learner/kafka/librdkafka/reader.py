"""The group consumer on librdkafka: :class:`~stream_learner.kafka.protocol.Reader`.

Every call on the consumer runs in one thread of its own (``consuming``): confluent-kafka's
``Consumer`` takes one call at a time, so a ``position()`` from the event loop would wait out a
``consume()`` in flight, and one made while a rebalance callback waits for the loop would never
return. A fetch runs there, as one job: the pauses, resumes and commits asked for since the last
one, then ``consume()``, then the positions and high watermarks of the assigned partitions, which
the loop reads as of that fetch. Rebalance callbacks, which librdkafka calls inside ``consume()``,
are bridged to the loop by :mod:`.rebalance`.

librdkafka decompresses every codec Kafka defines itself. A batch it cannot read (corrupt, a codec
it was built without) comes back as an error naming its partition and offset, and is read past
(:mod:`.read_past`): its records, or the whole batch for the dead-letter topic; reading goes on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping

import structlog
from aiokafka import TopicPartition
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as RdTopicPartition

from stream_learner.kafka.librdkafka.read_past import ReadingPast
from stream_learner.kafka.librdkafka.records import MessageColumns
from stream_learner.kafka.librdkafka.threads import DaemonThread
from stream_learner.kafka.protocol import Fetched
from stream_learner.records import RecordColumns, RecordList, Rejected, Totals

log = structlog.get_logger(__name__)
UNREADABLE = {KafkaError._BAD_MSG, KafkaError._BAD_COMPRESSION}
"""Message errors that name a batch librdkafka cannot read."""


class LibrdkafkaReader:
    """Reads through a subscribed :class:`confluent_kafka.Consumer` that only ``consuming`` calls."""

    def __init__(
        self, consumer: Consumer, consuming: DaemonThread, max_records: int, totals: Totals, reading_past: ReadingPast
    ) -> None:
        self.consumer = consumer
        self._reading_past = reading_past
        self._consuming = consuming
        self._max = max_records
        self._totals = totals
        self._ops: deque[Callable[[], None]] = deque()
        """Calls on the consumer asked for on the loop, made in the consuming thread (:meth:`run_ops`)."""
        self._commit: list[RdTopicPartition] | None = None
        """The offsets to commit at the next :meth:`run_ops`: the latest asked for."""
        self._paused: set[TopicPartition] = set()
        self._assignment: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._highwater: dict[TopicPartition, int] = {}
        self.partition_counts: dict[str, int] = {}
        """Partitions per topic, as the connection last read them from the metadata."""
        self.starts: dict[TopicPartition, int] = {}
        """Where reading started on each partition of the assignment, where known (set on assignment)."""
        self.group_metadata: object | None = None
        """The consumer's group metadata as of its last assignment (for exactly-once's offsets)."""

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        loop = asyncio.get_running_loop()
        messages, self._positions, self._highwater = await loop.run_in_executor(self._consuming, self._turn, timeout_s)
        by_partition: dict[tuple[str, int], list[Message]] = {}
        failed: list[Message] = []
        for message in messages:
            if message.error() is not None:
                failed.append(message)
                continue
            key = (message.topic() or "", message.partition() or 0)
            found = by_partition.get(key)
            if found is None:
                found = by_partition[key] = []
            found.append(message)
        fetched: Fetched = {TopicPartition(t, p): MessageColumns(t, p, ms) for (t, p), ms in by_partition.items()}
        rejected: list[Rejected] = []
        for message in failed:
            rejected += await self._failed(message, fetched)
        return fetched, rejected

    def _turn(self, timeout_s: float) -> tuple[list[Message], dict[TopicPartition, int], dict[TopicPartition, int]]:
        """In the consuming thread: the calls asked for, the messages, then where each partition stands."""
        self.run_ops()
        messages = self._consume(timeout_s)
        held = rd_partitions(self._assignment)
        positions = {TopicPartition(p.topic, p.partition): p.offset for p in self.consumer.position(held)}
        highwater = {}
        for p in held:
            low, high = self.consumer.get_watermark_offsets(p, cached=True)
            tp = TopicPartition(p.topic, p.partition)
            highwater[tp] = high
            # librdkafka knows a position only once it handed out a record: before, it is where reading
            # started, and a partition with nothing to read is at its end.
            position = positions.get(tp, -1)
            position = position if position >= 0 else self.starts.get(tp, -1)
            positions[tp] = position if position >= 0 or not 0 <= low == high else high
        return messages, positions, highwater

    def _consume(self, timeout_s: float) -> list[Message]:
        """What is there now, else the first message within ``timeout_s`` and whatever came with it
        (``consume(n, timeout)`` alone would wait for ``n`` messages or the whole timeout)."""
        messages = self.consumer.consume(self._max, 0)
        if not messages and timeout_s > 0:
            messages = self.consumer.consume(1, timeout_s)
            if messages and self._max > 1:
                messages += self.consumer.consume(self._max - 1, 0)
        return messages

    def run_ops(self, *, revoking: bool = False) -> None:
        """Make the calls asked for (in the consuming thread, or in a rebalance callback there). Revoking,
        a commit waits for the broker: sent without waiting, it could reach the group after the
        rebalance and be refused, and the next owner would read from older offsets."""
        while self._ops:
            op = self._ops.popleft()
            try:
                op()
            except KafkaException as exc:  # a partition revoked in between: nothing to pause or commit
                log.debug("consumer_call_failed", error=str(exc))
        commit, self._commit = self._commit, None
        if commit:
            try:
                if revoking:  # two calls: the stubs type each value of ``asynchronous`` on its own
                    self.consumer.commit(offsets=commit, asynchronous=False)
                else:
                    self.consumer.commit(offsets=commit, asynchronous=True)
            except KafkaException as exc:
                log.warning("offset_commit_failed", error=str(exc))

    async def _failed(self, message: Message, fetched: Fetched) -> list[Rejected]:
        """An error message: a batch that cannot be read is read past (its records into ``fetched``)."""
        error = message.error()
        assert error is not None
        tp = TopicPartition(message.topic() or "", message.partition() or 0)
        offset = message.offset() or 0
        where = f"{tp.topic}[{tp.partition}]@{offset}"
        if error.code() in UNREADABLE:
            if self._reading_past.handled(tp, offset):
                return []
            records, rejected, resume = await self._reading_past.read(tp, offset, error.str())
            self._ops.append(lambda: self.consumer.seek(RdTopicPartition(tp.topic, tp.partition, resume)))
            if records:
                known = fetched.get(tp)
                fetched[tp] = RecordColumns([known, RecordList(records)]) if known else RecordList(records)
            return rejected
        if error.code() == KafkaError._AUTO_OFFSET_RESET:
            self._totals["offset_resets"] += 1
            detail = "the records were deleted before they were read (retention); reading resumes at the log start"
            log.warning("offset_out_of_range", where=where, detail=detail, error=error.str())
            return []
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer_error", where=where, error=error.str())
        return []

    def assignment(self) -> set[TopicPartition]:
        """As the rebalance callbacks last said."""
        return set(self._assignment)

    def position(self, tp: TopicPartition) -> int | None:
        """As of the last fetch."""
        position = self._positions.get(tp, -1)
        return None if position < 0 or tp not in self._assignment else position

    def readable_end(self, tp: TopicPartition) -> int | None:
        """The end librdkafka last fetched: with read_committed, the last stable offset."""
        return self.highwater(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """As of the last fetch."""
        high = self._highwater.get(tp, -1)
        return None if high < 0 or tp not in self._assignment else high

    def partition_count(self, topic: str) -> int | None:
        return self.partition_counts.get(topic)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """From the next fetch on."""
        partitions = list(partitions)
        self._paused.update(partitions)
        self._ops.append(lambda: self.consumer.pause(rd_partitions(partitions)))

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        self._paused.difference_update(partitions)
        self._ops.append(lambda: self.consumer.resume(rd_partitions(partitions)))

    def paused(self) -> set[TopicPartition]:
        return self._paused & self._assignment

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """The rebalance assigned ``partitions`` (the whole assignment); each starts unpaused."""
        self._assignment = set(partitions)
        self._paused.difference_update(partitions)

    def unassigned(self) -> None:
        """The rebalance took every partition (revoked or lost)."""
        self._assignment = set()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Sent at the next fetch without waiting (the offsets are advisory; a failure is logged by
        :func:`commit_reported`), or before a revocation completes, waiting (:meth:`run_ops`)."""
        self._commit = rd_partitions(offsets, offsets)  # a later commit supersedes one not yet sent

    async def close(self) -> None:
        """Leave the group (in the consuming thread); the reader holds nothing from then on."""
        self._assignment = set()
        await asyncio.get_running_loop().run_in_executor(self._consuming, self.consumer.close)


def commit_reported(error: KafkaError | None, partitions: list[RdTopicPartition]) -> None:
    """librdkafka's ``on_commit`` callback (run inside ``consume()``)."""
    if error is not None:
        log.warning("offset_commit_failed", error=error.str())


def rd_partitions(
    partitions: Iterable[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None
) -> list[RdTopicPartition]:
    """librdkafka's ``TopicPartition`` objects for ``partitions``, with their ``offsets`` where given."""
    if offsets is None:
        return [RdTopicPartition(tp.topic, tp.partition) for tp in partitions]
    return [RdTopicPartition(tp.topic, tp.partition, offsets.get(tp, OFFSET_INVALID)) for tp in partitions]
