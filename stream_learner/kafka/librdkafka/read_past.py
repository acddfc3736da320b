"""Past a batch librdkafka cannot read: the batch read from raw Fetch bytes, and the consumer moved after it.

librdkafka reports a batch it cannot decompress or parse as an error at its offset, again on every
fetch of the partition: the partition would stall. Here the batch is fetched raw
(:func:`~stream_learner.kafka.batch_reader.read_batch_at`, the same reader the aiokafka path uses):
its records come back where our reader can read them, or the whole batch as one
:class:`~stream_learner.records.Rejected` naming its offset range, for the dead-letter topic; the
consumer then seeks past it. Either way no record is lost and no partition stalls.
"""

from __future__ import annotations

from dataclasses import replace

import structlog
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.errors import KafkaError

from stream_learner.kafka.batch_format import RecordBatch
from stream_learner.kafka.batch_reader import read_batch_at, unreadable_batch
from stream_learner.kafka.librdkafka.records import MessageRecord
from stream_learner.records import RawRecord, Rejected

log = structlog.get_logger(__name__)


class ReadingPast:
    """Reads unreadable batches raw through ``client``; remembers where each partition resumes, so the
    errors librdkafka repeats until the seek takes effect are passed over."""

    def __init__(self, client: AIOKafkaClient) -> None:
        self._client = client
        self._resumes: dict[TopicPartition, int] = {}

    def handled(self, tp: TopicPartition, offset: int) -> bool:
        """An error at ``offset`` of ``tp`` below where a batch already read past ends."""
        return offset < self._resumes.get(tp, -1)

    async def read(self, tp: TopicPartition, offset: int, error: str) -> tuple[list[RawRecord], list[Rejected], int]:
        """The records of the batch at ``offset`` (or it as one rejected record), and the offset after it."""
        batch = await read_batch_at(self._client, tp, offset, read_committed=True)
        if batch is None:
            return [], [], offset
        self._resumes[tp] = batch.next_offset
        if batch.problem is None:
            where = f"{tp.topic}[{tp.partition}]@{batch.base_offset}..{batch.last_offset}"
            log.warning("batch_read_past_librdkafka", where=where, records=len(batch.records), error=error)
            return list(batch.records), [], batch.next_offset
        return [], [unreadable_batch(tp, batch)], batch.next_offset

    async def exact_headers(self, rejected: list[Rejected]) -> list[Rejected]:
        """``rejected``, each record whose headers librdkafka may have changed given those of the log.

        Read from the raw batch, as the aiokafka path reads them: a key that is not UTF-8 comes
        back with its bytes escaped (``"\\xff"``), one holding a NUL whole. Where the batch cannot
        be read (or the broker does not answer), the record keeps what librdkafka read, and that
        is logged: a dead letter is not held back for its headers.
        """
        batches: dict[TopicPartition, list[RecordBatch]] = {}
        exact = []
        for item in rejected:
            r = item.record
            if isinstance(r, MessageRecord) and r.headers_to_reread:
                try:
                    found = await self._record_at(TopicPartition(r.topic, r.partition), r.offset, batches)
                except KafkaError as exc:
                    log.warning("dead_letter_headers_not_reread", where=r.where, error=repr(exc))
                    found = None
                if found is not None:
                    item = replace(item, record=replace(r, headers=found.headers, headers_to_reread=False))
            exact.append(item)
        return exact

    async def _record_at(
        self, tp: TopicPartition, offset: int, batches: dict[TopicPartition, list[RecordBatch]]
    ) -> RawRecord | None:
        """The record at ``offset`` from the batches read so far in this call, else from its batch, read raw."""
        read = batches.setdefault(tp, [])
        found = next((r for b in read for r in b.records if r.offset == offset), None)
        if found is None and (batch := await read_batch_at(self._client, tp, offset, read_committed=True)):
            read.append(batch)
            found = next((r for r in batch.records if r.offset == offset), None)
        return found

    async def close(self) -> None:
        await self._client.close()
