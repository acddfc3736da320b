"""Record batches (message format v2) parsed leniently from the bytes of a Fetch response.

aiokafka's consumer decodes batches inside ``getmany()`` and raises on one it cannot decode;
here every batch comes back, with its records or with the :class:`BatchProblem` that keeps them
from being read, so that the caller can dead-letter its offset range and go on.

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

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.record.util import calc_crc32c

from stream_learner.kafka.batch_records import BatchPlace, MalformedRecords, read_records
from stream_learner.records import RawRecord

__all__ = ["BatchProblem", "ProblemReason", "RecordBatch", "bytes_needed", "parse_record_batches"]

ProblemReason = Literal["unsupported_codec", "corrupt_batch", "unsupported_format"]

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
# private API: aiokafka.codec reads Kafka's framings (xerial snappy, lz4 frame) as aiokafka's consumer does.
_CODECS: Final[dict[int, tuple[str, Callable[[bytes], bytes] | None]]] = {
    0: ("none", None),
    1: ("gzip", gzip_decode),
    2: ("snappy", snappy_decode),
    3: ("lz4", lz4_decode),
    4: ("zstd", zstd_decode),
}
_CONTROL_MARKERS: Final[dict[int, Literal["abort", "commit"]]] = {0: "abort", 1: "commit"}


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
    """A batch of an aborted transaction, found so by ``read_batch_at`` under read_committed (no records)."""

    @property
    def next_offset(self) -> int:
        """Where reading continues after this batch."""
        return self.last_offset + 1

    @property
    def skip(self) -> bool:
        """Nothing for the caller here: a readable transaction marker, or an aborted transaction's batch."""
        return self.problem is None and (self.is_control or self.aborted)


def parse_record_batches(data: bytes | bytearray | memoryview, topic: str, partition: int) -> list[RecordBatch]:
    """Every complete batch of ``data`` (a Fetch response's records field), in order, tagged ``topic[partition]``.

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
        length: int = struct.unpack_from(">i", view, position + 8)[0]
        if length < _MIN_LENGTH:
            break
        if position + _LOG_OVERHEAD + length > len(view):
            return position + _LOG_OVERHEAD + length
        position += _LOG_OVERHEAD + length
    return len(view)


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

    # private API: aiokafka.record.util's CRC-32C, the one its consumer checks with; the standard library has none.
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
    log_append_ts = max_ts if attributes & _LOG_APPEND_TIME else None
    place = BatchPlace(topic, partition, base_offset, base_ts, count, last_delta, log_append_ts)
    try:
        records = read_records(body, place)
    except MalformedRecords as exc:
        return unreadable("corrupt_batch", f"The batch at offset {base_offset} does not parse: {exc}.")
    if batch.is_control:
        return replace(batch, control_marker=_marker(records))
    return replace(batch, records=tuple(records))


def _marker(records: list[RawRecord]) -> Literal["abort", "commit"] | None:
    """The marker a control batch's record holds: its key is a version (int16) and a type (int16)."""
    key = records[0].key if records else None
    return _CONTROL_MARKERS.get(struct.unpack_from(">h", key, 2)[0]) if key is not None and len(key) >= 4 else None
