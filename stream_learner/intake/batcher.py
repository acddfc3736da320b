"""Micro-batcher: collects decoded events until a batch is due for the model.

A batch is due when it holds ``max_batch_size`` events, or ``max_delay_s`` after
its first event arrived, whichever comes first. Batches never exceed
``max_batch_size``; events leave in arrival order. In catch-up the service may also
take the events of one partition (:meth:`MicroBatcher.take_partition`): they leave in
arrival order among themselves.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import numpy as np

from stream_learner.records import EventBatch

UNKNOWN_PARTITION = -2
"""The partition of events read without one (only fakes in tests)."""


class _Chunk(NamedTuple):
    events: EventBatch
    arrived: float
    partition: int | None
    """The one events partition of all its events, or None before :meth:`MicroBatcher.take_partition` split it."""


class MicroBatcher:
    """Size-or-delay micro-batching over :class:`EventBatch` chunks."""

    def __init__(self, max_batch_size: int, max_delay_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._chunks: deque[_Chunk] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, events: EventBatch, now: float) -> None:
        """Queue ``events``, which arrived at ``now`` (monotonic seconds)."""
        if len(events):
            self._chunks.append(_Chunk(events, now, None))
            self._size += len(events)

    def seconds_until_due(self, now: float) -> float:
        """0 when a batch is due now, ``inf`` when nothing waits."""
        if self._size >= self.max_batch_size:
            return 0.0
        if self._size == 0:
            return math.inf
        first_arrival = self._chunks[0].arrived
        return max(0.0, first_arrival + self.max_delay_s - now)

    def take_due(self, now: float) -> list[EventBatch]:
        """Every batch due at ``now``: full ones, plus the remainder once its delay has passed."""
        due: list[EventBatch] = []
        while self._size >= self.max_batch_size:
            due.append(self._take(self.max_batch_size))
        if self._size and self.seconds_until_due(now) == 0.0:
            due.append(self._take(self._size))
        return due

    def take_all(self) -> list[EventBatch]:
        """Everything queued, in batches of at most ``max_batch_size`` (for draining)."""
        due: list[EventBatch] = []
        while self._size:
            due.append(self._take(min(self._size, self.max_batch_size)))
        return due

    def take_first(self, count: int) -> EventBatch:
        """The first ``count`` events queued (all of them, if fewer), in arrival order."""
        return self._take(min(count, self._size))

    def take_partition(self, partition: int, count: int) -> EventBatch | None:
        """The first ``count`` events queued from events partition ``partition`` (all, if fewer); None if none."""
        self._split()
        taken: list[EventBatch] = []
        need, kept = count, deque[_Chunk]()
        for chunk in self._chunks:
            if need and chunk.partition == partition:
                n = min(need, len(chunk.events))
                taken.append(chunk.events.slice(0, n))
                need -= n
                if n == len(chunk.events):
                    continue
                chunk = chunk._replace(events=chunk.events.slice(n, len(chunk.events)))
            kept.append(chunk)
        self._chunks = kept
        self._size -= count - need
        return EventBatch.concat(taken) if taken else None

    def heads(self) -> dict[int, str]:
        """Per events partition, the id of its first queued event (partitions in order of arrival)."""
        self._split()
        heads: dict[int, str] = {}
        for chunk in self._chunks:
            assert chunk.partition is not None  # split just above
            heads.setdefault(chunk.partition, chunk.events.ids[0])
        return heads

    def _split(self) -> None:
        """Every chunk of several partitions becomes one per partition (in partition order, same arrival)."""
        if all(chunk.partition is not None for chunk in self._chunks):
            return
        chunks = deque[_Chunk]()
        for chunk in self._chunks:
            if chunk.partition is not None:
                chunks.append(chunk)
                continue
            partitions = chunk.events.partitions
            if partitions is None:
                chunks.append(chunk._replace(partition=UNKNOWN_PARTITION))
                continue
            order = np.argsort(partitions, kind="stable")
            values, starts = np.unique(partitions[order], return_index=True)
            for p, rows in zip(values.tolist(), np.split(order, starts[1:]), strict=True):
                chunks.append(_Chunk(chunk.events.take(rows), chunk.arrived, p))
        self._chunks = chunks

    def _take(self, count: int) -> EventBatch:
        taken: list[EventBatch] = []
        need = count
        while need:
            chunk = self._chunks[0]
            if len(chunk.events) <= need:
                taken.append(chunk.events)
                self._chunks.popleft()
                need -= len(chunk.events)
            else:
                taken.append(chunk.events.slice(0, need))
                self._chunks[0] = chunk._replace(events=chunk.events.slice(need, len(chunk.events)))
                need = 0
        self._size -= count
        return EventBatch.concat(taken)
