"""Micro-batcher: collects decoded events until a batch is due for the model.

A batch is due when it holds ``max_batch_size`` events, or ``max_delay_s`` after
its first event arrived, whichever comes first. Batches never exceed
``max_batch_size``; events leave in arrival order.
"""

from __future__ import annotations

import math
from collections import deque

from stream_learner.records import EventBatch


class MicroBatcher:
    """Size-or-delay micro-batching over :class:`EventBatch` chunks."""

    def __init__(self, max_batch_size: int, max_delay_s: float) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._chunks: deque[tuple[EventBatch, float]] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, events: EventBatch, now: float) -> None:
        """Queue ``events``, which arrived at ``now`` (monotonic seconds)."""
        if len(events):
            self._chunks.append((events, now))
            self._size += len(events)

    def seconds_until_due(self, now: float) -> float:
        """0 when a batch is due now, ``inf`` when nothing waits."""
        if self._size >= self.max_batch_size:
            return 0.0
        if self._size == 0:
            return math.inf
        first_arrival = self._chunks[0][1]
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

    def _take(self, count: int) -> EventBatch:
        taken: list[EventBatch] = []
        need = count
        while need:
            chunk, arrived = self._chunks[0]
            if len(chunk) <= need:
                taken.append(chunk)
                self._chunks.popleft()
                need -= len(chunk)
            else:
                taken.append(chunk.slice(0, need))
                self._chunks[0] = (chunk.slice(need, len(chunk)), arrived)
                need = 0
        self._size -= count
        return EventBatch.concat(taken)
