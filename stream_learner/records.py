"""Small immutable record types that flow between the parts.

The hot path carries arrays (:class:`EventBatch`, :class:`LabelBatch`), never one
Python object per record; only a rejected record becomes an object of its own.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A consumed Kafka record, as far as stream_learner cares."""

    topic: str
    """Topic it was read from."""
    partition: int
    """Partition it was read from."""
    offset: int
    """Its offset in that partition."""
    key: bytes | None
    """Key bytes as produced (the event id by contract)."""
    value: bytes | None
    """Value bytes as produced."""
    headers: Sequence[tuple[str, bytes]] = ()
    """Headers as produced."""
    timestamp_ms: int = -1
    """Kafka timestamp (CreateTime unless the topic says otherwise)."""

    @property
    def where(self) -> str:
        """``topic[partition]@offset``, for logs."""
        return f"{self.topic}[{self.partition}]@{self.offset}"

    @staticmethod
    def of(record: RawRecord | Any) -> RawRecord:
        """``record`` itself, or a copy of an aiokafka ``ConsumerRecord``-like one (same attribute names).

        The decoders take consumed records as they come and build a ``RawRecord`` only for a
        rejected one, so the hot path makes no Python object per record.
        """
        if isinstance(record, RawRecord):
            return record
        return RawRecord(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            timestamp_ms=record.timestamp,
        )


class ReadRecords(Protocol):
    """Records one fetch read, in the order read, as columns: a client hands them over this way, so
    the decoders make no Python object per record (only a rejected one becomes a :class:`RawRecord`)."""

    def __len__(self) -> int: ...
    def values(self) -> list[bytes | None]: ...
    def partitions(self) -> np.ndarray:
        """int64: the partition each record was read from."""
        ...

    def offsets(self) -> np.ndarray:
        """int64: each record's offset in its partition."""
        ...

    def raw(self, i: int) -> RawRecord:
        """Record ``i`` as an object of its own."""
        ...

    def next_offset(self) -> int:
        """The offset after the last record's (of one partition's records)."""
        ...


class RecordList:
    """:class:`ReadRecords` over records with :class:`RawRecord`'s attribute names (aiokafka's
    ``ConsumerRecord``, or ``RawRecord`` itself)."""

    def __init__(self, records: Sequence[Any]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def values(self) -> list[bytes | None]:
        return [r.value for r in self._records]

    def partitions(self) -> np.ndarray:
        return np.fromiter((r.partition for r in self._records), np.int64, len(self._records))

    def offsets(self) -> np.ndarray:
        return np.fromiter((r.offset for r in self._records), np.int64, len(self._records))

    def raw(self, i: int) -> RawRecord:
        return RawRecord.of(self._records[i])

    def next_offset(self) -> int:
        return int(self._records[-1].offset) + 1


class RecordColumns:
    """Several :class:`ReadRecords` (say, one per partition) read as one, in order."""

    def __init__(self, parts: Sequence[ReadRecords]) -> None:
        self._parts = parts
        self._starts = list(itertools.accumulate((len(p) for p in parts), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    def values(self) -> list[bytes | None]:
        return list(itertools.chain.from_iterable(p.values() for p in self._parts))

    def partitions(self) -> np.ndarray:
        return np.concatenate([p.partitions() for p in self._parts]) if self._parts else np.zeros(0, np.int64)

    def offsets(self) -> np.ndarray:
        return np.concatenate([p.offsets() for p in self._parts]) if self._parts else np.zeros(0, np.int64)

    def raw(self, i: int) -> RawRecord:
        part = bisect.bisect_right(self._starts, i) - 1
        return self._parts[part].raw(i - self._starts[part])

    def next_offset(self) -> int:
        return self._parts[-1].next_offset()


def as_read_records(records: ReadRecords | Sequence[Any]) -> ReadRecords:
    """``records`` as :class:`ReadRecords` (a sequence of records is wrapped in a :class:`RecordList`)."""
    return RecordList(records) if isinstance(records, Sequence) else records


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be used, and why. It goes to the dead-letter topic unchanged."""

    record: RawRecord
    """The record exactly as consumed."""
    reason: str
    """Short machine-readable reason, e.g. ``wrong_feature_length``."""
    detail: str
    """One human-readable sentence."""


@dataclass(frozen=True)
class EventBatch:
    """Decoded events, row i of every array belonging to ``ids[i]``."""

    ids: list[str]
    """Event ids."""
    features: np.ndarray
    """float32 ``[n, input_dim]``, all finite."""
    ts: np.ndarray
    """float64 ``[n]`` event time in epoch seconds; NaN where the event had none."""
    received_at: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """float64 ``[n]`` wall-clock time the service read each event."""
    partitions: np.ndarray | None = None
    """int64 ``[n]``: the events partition each event was read from, where known (its prediction goes
    to the same one)."""

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def empty(input_dim: int) -> EventBatch:
        """A batch of no events."""
        return EventBatch([], np.zeros((0, input_dim), np.float32), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """One batch holding every row of ``batches`` in order."""
        if len(batches) == 1:
            return batches[0]
        return EventBatch(
            ids=[i for b in batches for i in b.ids],
            features=np.concatenate([b.features for b in batches]),
            ts=np.concatenate([b.ts for b in batches]),
            received_at=np.concatenate([b.received_at for b in batches]),
            partitions=None
            if any(b.partitions is None for b in batches)
            else np.concatenate([b.partitions for b in batches]),
        )

    def event_times(self) -> np.ndarray:
        """Epoch seconds of each event: its ``ts`` where given, else when the service read it."""
        return np.where(np.isnan(self.ts), self.received_at, self.ts)

    def take(self, rows: np.ndarray) -> EventBatch:
        """Rows ``rows`` (int indices), in that order, as a batch of their own."""
        return EventBatch(
            [self.ids[i] for i in rows.tolist()],
            self.features[rows],
            self.ts[rows],
            self.received_at[rows] if len(self.received_at) else self.received_at,
            None if self.partitions is None else self.partitions[rows],
        )

    def slice(self, start: int, stop: int) -> EventBatch:
        """Rows ``start:stop`` as a batch of their own."""
        return EventBatch(
            self.ids[start:stop],
            self.features[start:stop],
            self.ts[start:stop],
            self.received_at[start:stop],
            None if self.partitions is None else self.partitions[start:stop],
        )


@dataclass(frozen=True)
class LabelBatch:
    """Decoded labels, row i belonging to event ``ids[i]``."""

    ids: list[str]
    """Event ids the labels belong to."""
    labels: np.ndarray
    """float64 ``[n]``: class indices (exact integers) or regression targets."""
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64 ``[n]``: offset of each label record in its partition."""
    partitions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64 ``[n]``: partition of each label record."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Predictions:
    """What the model made of an :class:`EventBatch`."""

    events: EventBatch
    """The events predicted."""
    scores: np.ndarray
    """float32 ``[n, output_dim]``: class probabilities, or the regression output."""
    model_version: int | np.ndarray
    """Optimizer steps applied to the weights that made these predictions: one for all, or int64 ``[n]``
    one per event (catching up, a micro-batch's events are predicted by successive weights)."""
    model_generation: int | None = None
    """The trainer generation of a predictor's model version (None in ROLE=all: one process, one lineage)."""
    model: str | None = None
    """The name of the model that served, with challengers (``default``, a challenger's, or ``average``)."""


class Totals(Counter[str]):
    """The service's running totals (events consumed, predicted, dead-lettered by reason, ...): part of
    every checkpoint's cut, so they are the service's own across restarts."""

    def state_dict(self) -> dict[str, int]:
        return dict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.clear()
        self.update(state)
