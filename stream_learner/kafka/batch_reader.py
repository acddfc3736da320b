"""Record batches (message format v2) read from raw Fetch bytes, for partitions aiokafka cannot decode.

aiokafka decodes fetched batches inside ``getmany()``; a batch it cannot decode (a codec it
lacks, a CRC mismatch, a header key that is not UTF-8, which Kafka allows) raises there on
every fetch, and the partition never moves again. :func:`read_batch_at` reads the one batch at
a position on its own terms: it fetches the partition from its leader through an aiokafka
client (:func:`fetch_partition`) and parses the bytes leniently (:func:`parse_record_batches`),
so that the caller can hand the records to the usual decoders, or dead-letter the batch's
offset range with the problem's reason, and seek to ``next_offset`` in either case.

Guarantees:
- :func:`parse_record_batches` never raises, whatever the bytes: a batch that cannot be read
  comes back with a :class:`BatchProblem`; a trailing batch cut short does not come back.
- Codecs are aiokafka's (``aiokafka.codec``) and so is CRC-32C (``calc_crc32c``): a batch reads
  here when its bytes are sound, whatever aiokafka's consumer makes of its header keys.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import (
    CorruptRecordException,
    KafkaError,
    LeaderNotAvailableError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.util import calc_crc32c

from stream_learner.records import RawRecord

__all__ = [
    "DEFAULT_FETCH_BYTES",
    "MAX_BATCH_BYTES",
    "BatchProblem",
    "FetchedPartition",
    "ProblemReason",
    "RecordBatch",
    "bytes_needed",
    "fetch_partition",
    "parse_record_batches",
    "read_batch_at",
]

ProblemReason = Literal["unsupported_codec", "corrupt_batch", "unsupported_format"]
DEFAULT_FETCH_BYTES: Final = 1024 * 1024
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024
"""The most :func:`read_batch_at` asks for to get one whole batch; a batch declaring more is taken for corrupt."""

_HEADER = struct.Struct(">qiibIhiqqqhii")
"""BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
BaseTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordCount."""
_LOG_OVERHEAD: Final = struct.calcsize(">qi")
"""BaseOffset and Length: the bytes of a batch that its Length leaves out."""
_PREFIX = struct.Struct(">qiib")
"""BaseOffset, Length, PartitionLeaderEpoch (v0/v1: CRC), Magic: where every message format agrees."""
_CRC_COVERS_FROM: Final = struct.calcsize(">qiibI")
_MIN_LENGTH: Final = 4 + 1 + 1 + 4 + 4
"""Length of the smallest entry of any format (a v0 message: CRC, magic, attributes, null key, null value)."""
_CODEC_MASK: Final = 0x07
_LOG_APPEND_TIME: Final = 0x08
_TRANSACTIONAL: Final = 0x10
_CONTROL: Final = 0x20
_CODECS: Final[dict[int, tuple[str, Callable[[bytes], bytes] | None]]] = {
    0: ("none", None),
    1: ("gzip", gzip_decode),
    2: ("snappy", snappy_decode),
    3: ("lz4", lz4_decode),
    4: ("zstd", zstd_decode),
}
_CONTROL_MARKERS: Final[dict[int, Literal["abort", "commit"]]] = {0: "abort", 1: "commit"}
_READ_UNCOMMITTED, _READ_COMMITTED = 0, 1
_MAX_VARINT_BYTES: Final = 10


class _Malformed(Exception):
    """Records that do not parse: a ``corrupt_batch`` problem, never raised out of this module."""


@dataclass(frozen=True, slots=True)
class BatchProblem:
    """Why a batch's records cannot be read."""

    reason: ProblemReason
    """``unsupported_codec`` (a codec number Kafka does not define, or one whose library is missing),
    ``corrupt_batch`` (CRC mismatch, a length that cannot frame it, data that does not decompress, or
    records that do not parse) or ``unsupported_format`` (message format v0/v1)."""
    detail: str
    """One human-readable sentence."""
    raw: bytes = b""
    """The batch's bytes exactly as fetched (its whole remainder where its length cannot frame it)."""

    def __repr__(self) -> str:
        return f"BatchProblem({self.reason!r}, {self.detail!r}, raw={len(self.raw)} bytes)"


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """One record batch: its records, or the problem that keeps them from being read.

    Header keys are decoded as UTF-8 with ``errors="backslashreplace"``: a key that is not UTF-8
    (legal in Kafka; aiokafka raises on it) survives visibly, ``b"\\xff-k"`` as ``"\\\\xff-k"``.
    Keys, values and header values are the produced bytes, ``None`` where null.
    """

    base_offset: int
    last_offset: int
    """The batch's last offset as its header says; records below it may be gone (compaction)."""
    producer_id: int
    """-1 for a producer that is neither idempotent nor transactional."""
    is_transactional: bool
    is_control: bool
    """A transaction marker written by the broker: never data for the caller."""
    codec: str
    """``none``, ``gzip``, ``snappy``, ``lz4``, ``zstd``, or ``codec-N`` for a number Kafka does not define."""
    records: tuple[RawRecord, ...] = ()
    """In offset order; empty where :attr:`problem` is set, and for a control batch."""
    problem: BatchProblem | None = None
    control_marker: Literal["abort", "commit"] | None = None
    """A readable control batch's transaction marker."""
    aborted: bool = False
    """A batch of an aborted transaction, found so by :func:`read_batch_at` under read_committed (no records)."""

    @property
    def next_offset(self) -> int:
        """Where reading continues after this batch."""
        return self.last_offset + 1

    @property
    def skip(self) -> bool:
        """Nothing for the caller here: a readable transaction marker, or an aborted transaction's batch."""
        return self.problem is None and (self.is_control or self.aborted)


@dataclass(frozen=True, slots=True)
class FetchedPartition:
    """One partition's part of a Fetch response (its error code was 0)."""

    records: bytes
    """Whole batches from the one holding the fetch offset, perhaps a partial one last."""
    high_watermark: int
    """-1 where the broker left the partition out of its answer."""
    last_stable_offset: int | None
    """``None`` below Fetch v4."""
    aborted_transactions: tuple[tuple[int, int], ...]
    """``(producer_id, first_offset)`` of aborted transactions in the fetched range (read_committed, Fetch v4+)."""
    api_version: int
    """The Fetch version aiokafka negotiated with the broker."""


def parse_record_batches(data: bytes | bytearray | memoryview, topic: str, partition: int) -> list[RecordBatch]:
    """Every complete batch of ``data`` (a Fetch response's records field), in order, records tagged ``topic[partition]``.

    Never raises. A trailing batch cut short is left out. A batch that cannot be read has
    ``problem`` set; where even its length cannot frame it, it is the last one returned and its
    ``raw`` is the rest of ``data``. A problem batch's ``last_offset`` is at least its
    ``base_offset`` and, where a batch follows, below that batch's ``base_offset``.
    """
    view = _byte_view(data)
    batches: list[RecordBatch] = []
    position: int | None = 0
    while position is not None and (framed := _frame(view, position, topic, partition)) is not None:
        batch, position = framed
        if batches and batches[-1].problem is not None and batch.base_offset > batches[-1].base_offset:
            # A corrupt header's last offset is not to be trusted where the next batch says otherwise.
            batches[-1] = replace(batches[-1], last_offset=min(batches[-1].last_offset, batch.base_offset - 1))
        batches.append(batch)
    return batches


def bytes_needed(data: bytes | bytearray | memoryview) -> int:
    """Bytes from the start of ``data`` to the end of its first batch cut short; ``len(data)`` where none is."""
    view = _byte_view(data)
    position = 0
    while len(view) - position >= _LOG_OVERHEAD:
        length = struct.unpack_from(">i", view, position + 8)[0]
        if length < _MIN_LENGTH:
            break
        if position + _LOG_OVERHEAD + length > len(view):
            return position + _LOG_OVERHEAD + length
        position += _LOG_OVERHEAD + length
    return len(view)


async def fetch_partition(
    client: AIOKafkaClient,
    tp: TopicPartition,
    offset: int,
    *,
    read_committed: bool,
    max_bytes: int = DEFAULT_FETCH_BYTES,
    max_wait_ms: int = 100,
) -> FetchedPartition:
    """The raw records of ``tp`` from ``offset`` on, fetched from its leader in one Fetch request.

    The request is aiokafka's own ``FetchRequest`` at the version aiokafka negotiates (v4+ for
    ``read_committed``), with ``max_bytes`` for the response and the partition. ``max_wait_ms``
    is how long the broker may wait for data at the end of the log (some brokers answer a 0
    with no partition at all). Raises aiokafka's error type for the partition's error code, and
    aiokafka's errors for a request that fails.
    """
    leader = await _leader(client, tp)
    isolation = _READ_COMMITTED if read_committed else _READ_UNCOMMITTED
    request = FetchRequest(max_wait_ms, 1, max_bytes, isolation, [(tp.topic, [(tp.partition, offset, max_bytes)])])
    response = await client.send(leader, request)
    version = int(response.API_VERSION)
    for topic, partitions in response.topics:
        for partition, error_code, high_watermark, *rest in partitions:
            if (topic, partition) != (tp.topic, tp.partition):
                continue
            if error_code:
                raise for_code(error_code)(f"fetching {tp.topic}[{tp.partition}]@{offset} from node {leader}")
            # Fields between the high watermark and the records: v4 [lso, aborted],
            # v5-v10 [lso, log_start_offset, aborted], v11 [lso, log_start_offset, aborted, preferred_replica].
            aborted = (rest[2] if version >= 5 else rest[1]) if version >= 4 else None
            return FetchedPartition(
                records=bytes(rest[-1] or b""),
                high_watermark=high_watermark,
                last_stable_offset=rest[0] if version >= 4 else None,
                aborted_transactions=tuple((int(p), int(o)) for p, o in aborted or ()),
                api_version=version,
            )
    return FetchedPartition(b"", -1, None, (), version)


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
    batch whole from Fetch v3 on anyway). Raises aiokafka's errors as :func:`fetch_partition`
    does, ``CorruptRecordException`` for a batch declaring more than :data:`MAX_BATCH_BYTES`,
    and ``KafkaError`` where the broker will not send a whole batch it has room for.
    """
    size = max_bytes
    while True:
        fetched = await fetch_partition(
            client, tp, offset, read_committed=read_committed, max_bytes=size, max_wait_ms=max_wait_ms
        )
        batches = parse_record_batches(fetched.records, tp.topic, tp.partition)
        index = _index_at(batches, offset)
        if index is not None:
            break
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
    batch = batches[index]
    if read_committed and _aborted(batches, index, fetched.aborted_transactions):
        return replace(batch, records=(), problem=None, aborted=True)
    if batch.problem is not None:
        ceiling = fetched.high_watermark - 1 if fetched.high_watermark > offset else batch.last_offset
        return replace(batch, last_offset=max(min(batch.last_offset, ceiling), offset, batch.base_offset))
    return replace(batch, records=tuple(r for r in batch.records if r.offset >= offset))


async def _leader(client: AIOKafkaClient, tp: TopicPartition) -> int:
    leader = client.cluster.leader_for_partition(tp)
    if leader is None:
        # The client does not follow this topic (a producer's client follows only what it sent to).
        leader = (await client.fetch_all_metadata()).leader_for_partition(tp)
    if leader is None:
        raise UnknownTopicOrPartitionError(f"{tp.topic}[{tp.partition}] is not in the cluster metadata")
    if leader < 0:
        raise LeaderNotAvailableError(f"{tp.topic}[{tp.partition}] has no leader")
    return int(leader)


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


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _frame(view: memoryview, position: int, topic: str, partition: int) -> tuple[RecordBatch, int | None] | None:
    """The batch at ``position`` and where the next starts (``None``: past framing); ``None`` where it is cut short."""
    if len(view) - position < _PREFIX.size:
        return None
    base_offset, length, _, magic = _PREFIX.unpack_from(view, position)
    if length < _MIN_LENGTH:
        detail = f"The batch at offset {base_offset} declares a length of {length} bytes."
        return _unreadable(base_offset, BatchProblem("corrupt_batch", detail, bytes(view[position:]))), None
    end = position + _LOG_OVERHEAD + length
    if end > len(view):
        return None
    raw = view[position:end]
    if magic in (0, 1):
        # A v0/v1 entry's offset is that of its last message, compressed wrapper or not.
        detail = f"Offset {base_offset} is in message format v{magic}; only v2 is read."
        return _unreadable(base_offset, BatchProblem("unsupported_format", detail, bytes(raw))), end
    if magic != 2 or len(raw) < _HEADER.size:
        detail = f"The batch at offset {base_offset} has magic byte {magic} and {len(raw)} bytes."
        return _unreadable(base_offset, BatchProblem("corrupt_batch", detail, bytes(raw))), end
    return _read_v2(raw, topic, partition), end


def _unreadable(base_offset: int, problem: BatchProblem) -> RecordBatch:
    return RecordBatch(base_offset, base_offset, -1, False, False, "none", (), problem)


def _read_v2(raw: memoryview, topic: str, partition: int) -> RecordBatch:
    """A whole v2 batch (``raw`` is exactly its bytes); never raises."""
    (base_offset, _, _, _, crc, attributes, last_delta, base_ts, max_ts, producer_id, _, _, count) = (
        _HEADER.unpack_from(raw)
    )
    codec_id = attributes & _CODEC_MASK
    codec, decode = _CODECS.get(codec_id, (f"codec-{codec_id}", None))
    batch = RecordBatch(
        base_offset, base_offset + max(last_delta, 0), producer_id,
        bool(attributes & _TRANSACTIONAL), bool(attributes & _CONTROL), codec,
    )  # fmt: skip

    def unreadable(reason: ProblemReason, detail: str) -> RecordBatch:
        return replace(batch, problem=BatchProblem(reason, detail, bytes(raw)))

    if calc_crc32c(raw[_CRC_COVERS_FROM:]) != crc:
        return unreadable("corrupt_batch", f"The batch at offset {base_offset} fails its CRC-32C check.")
    if codec_id not in _CODECS:
        return unreadable("unsupported_codec", f"Codec number {codec_id} is none that Kafka defines.")
    body = raw[_HEADER.size :]
    if decode is not None:
        try:
            body = memoryview(decode(bytes(body)))
        except NotImplementedError:
            return unreadable("unsupported_codec", f"The {codec} codec's library is not installed.")
        except Exception as exc:  # noqa: BLE001 - each codec library raises types of its own
            return unreadable("corrupt_batch", f"The {codec} data does not decompress ({type(exc).__name__}).")
    timestamp = max_ts if attributes & _LOG_APPEND_TIME else None
    try:
        records = _read_records(body, count, last_delta, base_offset, base_ts, timestamp, topic, partition)
    except _Malformed as exc:
        return unreadable("corrupt_batch", f"The batch at offset {base_offset} does not parse: {exc}.")
    if batch.is_control:
        return replace(batch, control_marker=_marker(records))
    return replace(batch, records=tuple(records))


def _marker(records: list[RawRecord]) -> Literal["abort", "commit"] | None:
    """The marker a control batch's record holds: its key is a version (int16) and a type (int16)."""
    key = records[0].key if records else None
    return _CONTROL_MARKERS.get(struct.unpack_from(">h", key, 2)[0]) if key is not None and len(key) >= 4 else None


def _read_records(
    body: memoryview, count: int, last_delta: int, base_offset: int, base_ts: int,
    log_append_ts: int | None, topic: str, partition: int,
) -> list[RawRecord]:  # fmt: skip
    """``count`` records filling ``body`` exactly, offset deltas rising within ``0..last_delta``."""
    if count < 0 or last_delta < 0:
        raise _Malformed(f"it counts {count} records up to offset delta {last_delta}")
    records: list[RawRecord] = []
    position, previous_delta = 0, -1
    while len(records) < count:
        length, position = _varint(body, position, len(body))
        end = position + length
        if length < 1 or end > len(body):
            raise _Malformed(f"record {len(records)} declares {length} bytes")
        ts_delta, position = _varint(body, position + 1, end)  # past the record's attributes
        offset_delta, position = _varint(body, position, end)
        key, position = _bytes(body, position, end)
        value, position = _bytes(body, position, end)
        header_count, position = _varint(body, position, end)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(max(header_count, 0)):
            header_key, position = _bytes(body, position, end)
            header_value, position = _bytes(body, position, end)
            if header_key is None:
                raise _Malformed(f"record {len(records)} has a null header key")
            headers.append((header_key.decode("utf-8", "backslashreplace"), header_value))
        if position != end or header_count < 0:
            raise _Malformed(f"record {len(records)} does not fill its {length} bytes")
        if not previous_delta < offset_delta <= last_delta:
            raise _Malformed(f"record {len(records)} has offset delta {offset_delta} after {previous_delta}")
        previous_delta = offset_delta
        records.append(
            RawRecord(
                topic, partition, base_offset + offset_delta, key, value, tuple(headers),  # type: ignore[arg-type]
                base_ts + ts_delta if log_append_ts is None else log_append_ts,
            )
        )  # fmt: skip
    if position != len(body):
        raise _Malformed(f"{len(body) - position} bytes follow its last record")
    return records


def _varint(buffer: memoryview, position: int, end: int) -> tuple[int, int]:
    """Kafka's zigzag varint (or varlong) at ``buffer[position:end]`` and the position after it."""
    value = shift = 0
    for at in range(position, min(end, position + _MAX_VARINT_BYTES)):
        byte = buffer[at]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), at + 1
        shift += 7
    raise _Malformed(f"a varint at byte {position} runs past its record")


def _bytes(buffer: memoryview, position: int, end: int) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (``None`` for length -1), and the position after them."""
    length, position = _varint(buffer, position, end)
    if length == -1:
        return None, position
    if length < 0 or position + length > end:
        raise _Malformed(f"a field of {length} bytes at byte {position} runs past its record")
    return bytes(buffer[position : position + length]), position + length
