"""The one record batch at a position, read from raw Fetch bytes, for partitions aiokafka cannot decode.

aiokafka decodes fetched batches inside ``getmany()``; a batch it cannot decode (a codec it
lacks, a CRC mismatch, a header key that is not UTF-8, which Kafka allows) raises there on
every fetch, and the partition never moves again. :func:`read_batch_at` reads the one batch at
a position on its own terms: it fetches the partition from its leader
(:func:`.fetch_request.fetch_partition`) and parses the bytes leniently
(:func:`.batch_format.parse_record_batches`), so that the caller can hand the records to the
usual decoders, or dead-letter the batch's offset range with the problem's reason, and seek to
``next_offset`` in either case.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import structlog
from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError

from stream_learner.kafka.batch_format import BatchProblem, RecordBatch, bytes_needed, parse_record_batches
from stream_learner.kafka.fetch_request import DEFAULT_FETCH_BYTES, FetchedPartition, fetch_partition
from stream_learner.records import RawRecord, Rejected

log = structlog.get_logger(__name__)

__all__ = ["MAX_BATCH_BYTES", "BatchProblem", "RecordBatch", "read_batch_at"]

MAX_BATCH_BYTES: Final = 256 * 1024 * 1024
"""The most :func:`read_batch_at` asks for to get one whole batch; a batch declaring more is taken for corrupt."""


async def read_batch_at(
    client: AIOKafkaClient,
    tp: TopicPartition,
    offset: int,
    *,
    read_committed: bool,
    max_bytes: int = DEFAULT_FETCH_BYTES,
    max_wait_ms: int = 100,
) -> RecordBatch | None:
    """The batch of ``tp`` holding ``offset`` (or the first after it), or ``None`` while there is none.

    Batches wholly below ``offset`` are passed over and records below it left out. What to do
    with the result, in order:
    - ``problem`` set: its records cannot be read; dead-letter ``base_offset..last_offset``
      (``last_offset`` is at least ``offset`` and below the high watermark).
    - else ``records`` (none for a control batch, nor for an aborted transaction's batch under
      ``read_committed``, which has ``aborted`` set and no problem, whatever its codec).
    Then continue at ``next_offset``, always past ``offset``.

    A batch larger than ``max_bytes`` is fetched again with room for it (brokers send the first
    batch whole from Fetch v3 on anyway). Raises aiokafka's errors as ``fetch_partition``
    does, ``CorruptRecordException`` for a batch declaring more than :data:`MAX_BATCH_BYTES`,
    and ``KafkaError`` where the broker will not send a whole batch it has room for.
    """
    found = await _fetch_holding(client, tp, offset, read_committed, max_bytes, max_wait_ms)
    if found is None:
        return None
    fetched, batches, index = found
    batch = batches[index]
    if read_committed and _aborted(batches, index, fetched.aborted_transactions):
        return replace(batch, records=(), problem=None, aborted=True)
    if batch.problem is not None:
        ceiling = fetched.high_watermark - 1 if fetched.high_watermark > offset else batch.last_offset
        return replace(batch, last_offset=max(min(batch.last_offset, ceiling), offset, batch.base_offset))
    return replace(batch, records=tuple(r for r in batch.records if r.offset >= offset))


async def _fetch_holding(
    client: AIOKafkaClient, tp: TopicPartition, offset: int, read_committed: bool, max_bytes: int, max_wait_ms: int
) -> tuple[FetchedPartition, list[RecordBatch], int] | None:
    """A fetch from ``offset``, its batches and the index of the one holding ``offset`` (or the first after it).

    Fetched again with room for the batch where the first answer cuts it short; ``None`` where
    there is no such batch yet.
    """
    size = max_bytes
    while True:
        fetched = await fetch_partition(
            client, tp, offset, read_committed=read_committed, max_bytes=size, max_wait_ms=max_wait_ms
        )
        batches = parse_record_batches(fetched.records, tp.topic, tp.partition)
        index = _index_at(batches, offset)
        if index is not None:
            return fetched, batches, index
        needed = bytes_needed(fetched.records)
        if needed <= len(fetched.records):
            return None
        if needed > MAX_BATCH_BYTES:
            raise CorruptRecordException(f"{tp.topic}[{tp.partition}]@{offset}: a batch declares {needed} bytes")
        if needed <= size:
            raise KafkaError(
                f"{tp.topic}[{tp.partition}]@{offset}: the broker sent {len(fetched.records)} of {needed} bytes"
            )
        size = needed


def _index_at(batches: list[RecordBatch], offset: int) -> int | None:
    """The batch holding ``offset``, or the first after it.

    The broker starts its answer at the batch it finds ``offset`` in, so an unreadable batch
    that seems to end below ``offset`` with none after it that starts at or below ``offset``
    holds it all the same.
    """
    for index, batch in enumerate(batches):
        if batch.next_offset > offset:
            return index
        after = batches[index + 1].base_offset if index + 1 < len(batches) else None
        if batch.problem is not None and batch.base_offset <= offset and (after is None or after > offset):
            return index
    return None


def _aborted(batches: list[RecordBatch], index: int, aborted_transactions: tuple[tuple[int, int], ...]) -> bool:
    """Whether ``batches[index]`` (of one fetch's batches, in order) belongs to an aborted transaction.

    Aborted, as aiokafka's fetcher decides, where the broker lists its producer as aborting from
    the transaction's first offset until its abort marker; or where its transaction's own marker,
    the producer's next one, is in this fetch and is an abort (brokers that send no list, such as
    Tansu, are covered that far). A batch whose CRC does not match is never taken for aborted:
    its header is not to be trusted, so it is dead-lettered instead.
    """
    batch = batches[index]
    trusted = batch.problem is None or batch.problem.reason == "unsupported_codec"
    if not trusted or not batch.is_transactional or batch.is_control:
        return False
    pending = sorted(aborted_transactions, key=lambda t: t[1])
    aborting: set[int] = set()
    for earlier in batches[: index + 1]:
        while pending and pending[0][1] <= earlier.base_offset:
            aborting.add(pending.pop(0)[0])
        if earlier.control_marker == "abort":
            aborting.discard(earlier.producer_id)
    if batch.producer_id in aborting:
        return True
    for later in batches[index + 1 :]:
        if later.problem is not None:
            return False
        if later.is_control and later.producer_id == batch.producer_id:
            return later.control_marker == "abort"
    return False


def unreadable_batch(tp: TopicPartition, batch: RecordBatch) -> Rejected:
    """A batch whose records cannot be read (``batch.problem`` set), as one rejected record: its raw bytes,
    at its base offset, naming its offset range (logged as ``batch_unreadable``)."""
    problem = batch.problem
    assert problem is not None
    where = f"{tp.topic}[{tp.partition}]@{batch.base_offset}..{batch.last_offset}"
    log.error("batch_unreadable", where=where, reason=problem.reason, detail=problem.detail)
    record = RawRecord(tp.topic, tp.partition, batch.base_offset, None, problem.raw)
    offsets = f"offsets {batch.base_offset}..{batch.last_offset} of {tp.topic}[{tp.partition}]"
    return Rejected(record, problem.reason, f"{offsets} cannot be read: {problem.detail}")
