"""The records inside one record batch's body (message format v2), read strictly.

A v2 record is a varint length, then attributes (one byte), a timestamp delta, an offset delta,
key, value and headers, each field a zigzag varint or a varint length and its bytes (-1: null).

Guarantees:
- :func:`read_records` returns exactly the batch's records or raises :class:`MalformedRecords`:
  a record that does not fill its declared length, offset deltas that do not rise within the
  batch's range, bytes left after the last record, a null header key.
- Header keys are decoded as UTF-8 with ``errors="backslashreplace"``: a key that is not UTF-8
  (legal in Kafka) survives visibly, ``b"\\xff-k"`` as ``"\\\\xff-k"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from stream_learner.records import RawRecord

__all__ = ["BatchPlace", "MalformedRecords", "read_records"]

_MAX_VARINT_BYTES: Final = 10

Header = tuple[str, bytes | None]


class MalformedRecords(Exception):
    """Records that do not parse; the message says where, in words."""


@dataclass(frozen=True, slots=True)
class BatchPlace:
    """What a batch's header says about the records in its body."""

    topic: str
    partition: int
    base_offset: int
    base_timestamp: int
    count: int
    """Records the header counts."""
    last_delta: int
    """The header's last offset delta: every record's offset delta lies in ``0..last_delta``."""
    log_append_timestamp: int | None
    """The batch's max timestamp where the topic stamps the append time, which every record then gets."""


def read_records(body: memoryview, place: BatchPlace) -> list[RawRecord]:
    """``place.count`` records filling ``body`` exactly, offset deltas rising within ``0..place.last_delta``."""
    if place.count < 0 or place.last_delta < 0:
        raise MalformedRecords(f"it counts {place.count} records up to offset delta {place.last_delta}")
    records: list[RawRecord] = []
    position, previous_delta = 0, -1
    while len(records) < place.count:
        record, position = _read_record(body, position, place, len(records))
        offset_delta = record.offset - place.base_offset
        if not previous_delta < offset_delta <= place.last_delta:
            raise MalformedRecords(f"record {len(records)} has offset delta {offset_delta} after {previous_delta}")
        previous_delta = offset_delta
        records.append(record)
    if position != len(body):
        raise MalformedRecords(f"{len(body) - position} bytes follow its last record")
    return records


def _read_record(body: memoryview, position: int, place: BatchPlace, index: int) -> tuple[RawRecord, int]:
    """Record ``index`` of the batch at ``body[position:]``, and the position after it."""
    length, position = _varint(body, position, len(body))
    end = position + length
    if length < 1 or end > len(body):
        raise MalformedRecords(f"record {index} declares {length} bytes")
    ts_delta, position = _varint(body, position + 1, end)  # past the record's attributes
    offset_delta, position = _varint(body, position, end)
    key, position = _bytes(body, position, end)
    value, position = _bytes(body, position, end)
    headers, position = _headers(body, position, end, index)
    if headers is None or position != end:
        raise MalformedRecords(f"record {index} does not fill its {length} bytes")
    timestamp = place.base_timestamp + ts_delta if place.log_append_timestamp is None else place.log_append_timestamp
    record = RawRecord(
        place.topic, place.partition, place.base_offset + offset_delta, key, value,
        headers,  # type: ignore[arg-type]  # Kafka allows null header values; RawRecord.headers types bytes only
        timestamp,
    )  # fmt: skip
    return record, end


def _headers(buffer: memoryview, position: int, end: int, index: int) -> tuple[tuple[Header, ...] | None, int]:
    """Record ``index``'s headers at ``buffer[position:end]`` (``None``: a negative count), and the position after."""
    count, position = _varint(buffer, position, end)
    headers: list[Header] = []
    for _ in range(max(count, 0)):
        key, position = _bytes(buffer, position, end)
        value, position = _bytes(buffer, position, end)
        if key is None:
            raise MalformedRecords(f"record {index} has a null header key")
        headers.append((key.decode("utf-8", "backslashreplace"), value))
    return (tuple(headers) if count >= 0 else None), position


def _varint(buffer: memoryview, position: int, end: int) -> tuple[int, int]:
    """Kafka's zigzag varint (or varlong) at ``buffer[position:end]`` and the position after it."""
    value = shift = 0
    for at in range(position, min(end, position + _MAX_VARINT_BYTES)):
        byte = buffer[at]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), at + 1
        shift += 7
    raise MalformedRecords(f"a varint at byte {position} runs past its record")


def _bytes(buffer: memoryview, position: int, end: int) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (``None`` for length -1), and the position after them."""
    length, position = _varint(buffer, position, end)
    if length == -1:
        return None, position
    if length < 0 or position + length > end:
        raise MalformedRecords(f"a field of {length} bytes at byte {position} runs past its record")
    return bytes(buffer[position : position + length]), position + length
