"""Kafka record batches (message format v2, uncompressed) written from packed keys and values.

aiokafka's batch builder appends one record per Python call and makes a metadata object
for each; :class:`PackedRecordBatch` writes every record of a batch in one compiled pass over
:class:`PackedRecords`: two byte buffers (all keys, all values) and their offsets. It has the interface that
``AIOKafkaProducer.send_batch`` takes from ``create_batch()``'s builder, so the producer's
queueing, retries and delivery futures are aiokafka's own.

Guarantees:
- The bytes equal those of aiokafka's ``DefaultRecordBatchBuilder`` for the same records and
  timestamp (``tests/test_record_batch.py`` compares them).
- Only for a producer that is neither idempotent nor transactional and does not compress
  (:func:`packs_batches`): those write producer state or a codec into the batch, which this
  writer does not.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from aiokafka import AIOKafkaProducer

# private API: aiokafka's CRC-32C, the one its broker-side check matches; the standard library has none.
from aiokafka.record.util import calc_crc32c

from stream_learner.kernels.compiled import compiled

_HEADER = struct.Struct(">qiibIhiqqqhii")
"""BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, RecordCount."""
_CRC_OFFSET = struct.calcsize(">qiib")
_ATTRIBUTES_OFFSET = struct.calcsize(">qiibI")
_AFTER_LENGTH_OFFSET = struct.calcsize(">qi")
_MAX_VARINT_BYTES = 5
_RECORD_OVERHEAD = 1 + 4 * _MAX_VARINT_BYTES + 1 + 1
"""Per record beyond key and value, at most: attributes, four varints, an offset delta and a header count."""


def packs_batches(producer: AIOKafkaProducer) -> bool:
    """Whether :class:`PackedRecordBatch` may go to ``producer``: no idempotence, transactions or compression."""
    # Private attributes (set in its __init__ since aiokafka 0.5); where one is missing, aiokafka's builder serves.
    # private API: whether the producer is transactional or compresses; it has no public accessor.
    return getattr(producer, "_txn_manager", True) is None and not getattr(producer, "_compression_type", True)


@dataclass(frozen=True)
class PackedRecords:
    """Record ``i``'s key is ``keys[key_offsets[i]:key_offsets[i + 1]]``; its value likewise."""

    keys: bytes
    key_offsets: np.ndarray
    values: bytes
    value_offsets: np.ndarray

    @staticmethod
    def of(keys: Sequence[bytes], values: Sequence[bytes]) -> PackedRecords:
        return PackedRecords(b"".join(keys), byte_offsets(keys), b"".join(values), byte_offsets(values))

    def __len__(self) -> int:
        return len(self.key_offsets) - 1

    def size_bounds(self, rows: np.ndarray) -> np.ndarray:
        """Bytes that each of ``rows`` takes in a record batch, at most."""
        sizes: np.ndarray = np.diff(self.key_offsets)[rows] + np.diff(self.value_offsets)[rows] + _RECORD_OVERHEAD
        return sizes

    def key(self, i: int) -> bytes:
        return self.keys[self.key_offsets[i] : self.key_offsets[i + 1]]

    def value(self, i: int) -> bytes:
        return self.values[self.value_offsets[i] : self.value_offsets[i + 1]]

    def split(self, rows: np.ndarray, max_bytes: int) -> list[np.ndarray]:
        """``rows`` cut, in order, into runs whose record batches stay within ``max_bytes``.

        A record too large for ``max_bytes`` alone gets a run of its own (the broker decides).
        """
        sizes = self.size_bounds(rows)
        if _HEADER.size + int(sizes.sum()) <= max_bytes:
            return [rows]
        cuts, used = [], _HEADER.size
        for i, size in enumerate(sizes.tolist()):
            if used + size > max_bytes and i:
                cuts.append(i)
                used = _HEADER.size
            used += size
        return np.split(rows, cuts)


def byte_offsets(items: Sequence[bytes]) -> np.ndarray:
    """int64 ``[n + 1]``: where each of ``items`` starts in ``b"".join(items)``, then the total length."""
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=offsets[1:])
    return offsets


class ClosedBatch:
    """A finished record batch (its bytes and record count) behind the part of aiokafka's
    ``BatchBuilder`` interface that ``AIOKafkaProducer.send_batch`` uses.

    Closed to further records; no producer state is ever written into it, so it is for a producer
    that is neither idempotent nor transactional.
    """

    def __init__(self, buffer: bytearray, count: int) -> None:
        self._buffer, self._count = buffer, count

    # The interface of aiokafka.producer.message_accumulator.BatchBuilder that the producer uses.

    def append(self, *, timestamp: float | None, key: bytes | None, value: bytes | None, headers: object = ()) -> None:
        """Closed to further records (aiokafka's contract for a full batch)."""
        return None

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def record_count(self) -> int:
        return self._count

    def size(self) -> int:
        return len(self._buffer)

    # private API: aiokafka's MessageBatch calls these two BatchBuilder methods.
    def _set_producer_state(self, producer_id: int, producer_epoch: int, base_sequence: int) -> None:
        raise AssertionError("a finished record batch is not for an idempotent or transactional producer")

    def _build(self) -> bytearray:
        return self._buffer


class PackedRecordBatch(ClosedBatch):
    """The records ``rows`` (in that order) of packed records, as one record batch.

    All get one timestamp, the time of construction (as aiokafka gives records sent without one).
    """

    def __init__(self, records: PackedRecords, rows: np.ndarray) -> None:
        count = len(rows)
        body = np.empty(int(records.size_bounds(rows).sum()), np.uint8)
        keys, values = np.frombuffer(records.keys, np.uint8), np.frombuffer(records.values, np.uint8)
        end = _write_records(
            keys, records.key_offsets, values, records.value_offsets, rows.astype(np.int64, copy=False), body
        )
        self._timestamp_ms = int(time.time() * 1000)
        buffer = bytearray(_HEADER.size + end)
        buffer[_HEADER.size :] = body[:end].data
        # The header is complete now: producer state, which aiokafka's builder writes at send time, never comes here.
        _HEADER.pack_into(
            buffer, 0, 0, len(buffer) - _AFTER_LENGTH_OFFSET, -1, 2, 0, 0, count - 1,
            self._timestamp_ms, self._timestamp_ms, -1, -1, 0, count,
        )  # fmt: skip
        struct.pack_into(">I", buffer, _CRC_OFFSET, calc_crc32c(memoryview(buffer)[_ATTRIBUTES_OFFSET:]))
        super().__init__(buffer, count)


@compiled("int64(uint8[::1], int64, int64)")
def _write_varint(out: np.ndarray, at: int, value: int) -> int:  # pragma: no cover - compiled
    """Kafka's zigzag varint of ``value`` at ``out[at:]``; returns the position after it."""
    zigzag = (value << 1) ^ (value >> 63)
    while zigzag >= 0x80:
        out[at] = (zigzag & 0x7F) | 0x80
        zigzag >>= 7
        at += 1
    out[at] = zigzag
    return at + 1


@compiled("int64(int64)")
def _varint_size(value: int) -> int:  # pragma: no cover - compiled
    zigzag = (value << 1) ^ (value >> 63)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


_BYTES = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)
_INDEX = numba.types.int64[::1]


@compiled(numba.types.int64(_BYTES, _INDEX, _BYTES, _INDEX, _INDEX, numba.types.uint8[::1]))
def _write_records(
    keys: np.ndarray, key_offsets: np.ndarray, values: np.ndarray, value_offsets: np.ndarray, rows: np.ndarray,
    out: np.ndarray,
) -> int:  # pragma: no cover - compiled  # fmt: skip
    """Records ``rows`` (offset deltas from 0, timestamp deltas 0, no headers) into ``out``; returns their length."""
    at = 0
    for delta in range(len(rows)):
        i = rows[delta]
        key_length = key_offsets[i + 1] - key_offsets[i]
        value_length = value_offsets[i + 1] - value_offsets[i]
        body = (
            1
            + 1
            + _varint_size(delta)
            + _varint_size(key_length)
            + key_length
            + _varint_size(value_length)
            + value_length
            + 1
        )
        at = _write_varint(out, at, body)
        out[at] = 0  # attributes
        out[at + 1] = 0  # timestamp delta
        at = _write_varint(out, at + 2, delta)
        at = _write_varint(out, at, key_length)
        out[at : at + key_length] = keys[key_offsets[i] : key_offsets[i + 1]]
        at = _write_varint(out, at + key_length, value_length)
        out[at : at + value_length] = values[value_offsets[i] : value_offsets[i + 1]]
        at += value_length
        out[at] = 0  # header count
        at += 1
    return at
