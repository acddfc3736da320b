"""The group consumer on librdkafka: :class:`~stream_learner.kafka.protocol.Reader`.

``consume()`` runs in one thread of its own (``consuming``), so the event loop never waits on
librdkafka, and rebalance callbacks (which librdkafka calls inside ``consume()``) run in that
thread too, bridged to the loop by :mod:`.rebalance`. Other calls (positions, watermarks, pause,
commit) go to librdkafka directly: its handle is thread-safe, and all but the commit return at once.

librdkafka decompresses every codec Kafka defines itself. A message it cannot read (a corrupt
batch, a codec it was built without) comes back as an error naming its partition and offset; it
becomes a :class:`~stream_learner.records.Rejected` for the dead-letter topic, and reading goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiokafka import TopicPartition
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as RdTopicPartition

from stream_learner.kafka.librdkafka.records import MessageColumns, raw_record
from stream_learner.kafka.protocol import Fetched
from stream_learner.records import Rejected, Totals

log = structlog.get_logger(__name__)
UNREADABLE = {KafkaError._BAD_MSG: "corrupt_batch", KafkaError._BAD_COMPRESSION: "unsupported_codec"}
"""Message errors that name a record that cannot be read, and the dead-letter reason of each."""


class LibrdkafkaReader:
    """Reads through a subscribed :class:`confluent_kafka.Consumer`; ``consuming`` runs its ``consume()``."""

    def __init__(self, consumer: Consumer, consuming: ThreadPoolExecutor, max_records: int, totals: Totals) -> None:
        self.consumer = consumer
        self._consuming = consuming
        self._max = max_records
        self._totals = totals
        self._paused: set[TopicPartition] = set()
        self.partition_counts: dict[str, int] = {}
        """Partitions per topic, as the connection last read them from the metadata."""
        self.closed = False
        """Set when the consumer closes: it holds no partition any more (librdkafka raises on a closed one)."""

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        loop = asyncio.get_running_loop()
        messages = await loop.run_in_executor(self._consuming, self._consume, timeout_s)
        by_partition: dict[tuple[str, int], list[Message]] = {}
        rejected: list[Rejected] = []
        for message in messages:
            if message.error() is not None:
                rejected += self._failed(message)
                continue
            key = (message.topic() or "", message.partition() or 0)
            found = by_partition.get(key)
            if found is None:
                found = by_partition[key] = []
            found.append(message)
        fetched: Fetched = {TopicPartition(t, p): MessageColumns(t, p, ms) for (t, p), ms in by_partition.items()}
        return fetched, rejected

    def _consume(self, timeout_s: float) -> list[Message]:
        """What is there now, else the first message within ``timeout_s`` and whatever came with it
        (``consume(n, timeout)`` alone would wait for ``n`` messages or the whole timeout)."""
        messages = self.consumer.consume(self._max, 0)
        if not messages and timeout_s > 0:
            messages = self.consumer.consume(1, timeout_s)
            if messages and self._max > 1:
                messages += self.consumer.consume(self._max - 1, 0)
        return messages

    def _failed(self, message: Message) -> list[Rejected]:
        error = message.error()
        assert error is not None
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        if error.code() in UNREADABLE:
            log.error("batch_unreadable", where=where, reason=UNREADABLE[error.code()], detail=error.str())
            detail = f"{where} cannot be read: {error.str()}"
            return [Rejected(raw_record(message), UNREADABLE[error.code()], detail)]
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
        if self.closed:
            return set()
        return {TopicPartition(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def position(self, tp: TopicPartition) -> int | None:
        if self.closed:
            return None
        (found,) = self.consumer.position([RdTopicPartition(tp.topic, tp.partition)])
        return None if found.offset < 0 else int(found.offset)

    def readable_end(self, tp: TopicPartition) -> int | None:
        """The end librdkafka last fetched: with read_committed, the last stable offset."""
        return self.highwater(tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        if self.closed:
            return None
        _, high = self.consumer.get_watermark_offsets(RdTopicPartition(tp.topic, tp.partition), cached=True)
        return None if high < 0 else int(high)

    def partition_count(self, topic: str) -> int | None:
        return self.partition_counts.get(topic)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        self.consumer.pause(rd_partitions(partitions))
        self._paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        self.consumer.resume(rd_partitions(partitions))
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return self._paused & self.assignment()

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """A partition assigned anew starts unpaused."""
        self._paused.difference_update(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await asyncio.to_thread(self._commit, rd_partitions(offsets, offsets))

    def _commit(self, offsets: list[RdTopicPartition]) -> None:
        self.consumer.commit(offsets=offsets, asynchronous=False)


def rd_partitions(
    partitions: Iterable[TopicPartition], offsets: Mapping[TopicPartition, int] | None = None
) -> list[RdTopicPartition]:
    """librdkafka's ``TopicPartition`` objects for ``partitions``, with their ``offsets`` where given."""
    if offsets is None:
        return [RdTopicPartition(tp.topic, tp.partition) for tp in partitions]
    return [RdTopicPartition(tp.topic, tp.partition, offsets.get(tp, OFFSET_INVALID)) for tp in partitions]
