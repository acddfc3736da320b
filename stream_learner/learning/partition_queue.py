"""One labels partition's queue of joined examples for the training schedule, lowest label offset first."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    """Queued examples of one partition, sorted by label offset (ties: in the order they were queued)."""

    offsets: np.ndarray
    joined_at: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def rows(self, start: int, stop: int | None = None) -> Chunk:
        """Rows ``start:stop`` (views, no copy)."""
        return Chunk(
            self.offsets[start:stop], self.joined_at[start:stop], self.features[start:stop],
            self.labels[start:stop], self.scores[start:stop],
        )  # fmt: skip

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        """The rows of ``chunks`` in order (a lone chunk itself)."""
        if len(chunks) == 1:
            return chunks[0]
        return Chunk(*(np.concatenate([getattr(c, f) for c in chunks]) for f in _FIELDS))

    def take(self, order: np.ndarray) -> Chunk:
        """The rows at ``order`` (copies)."""
        return Chunk(*(getattr(self, f)[order] for f in _FIELDS))


_FIELDS = ("offsets", "joined_at", "features", "labels", "scores")


class PartitionQueue:
    """One partition's examples: a deque of sorted chunks, each chunk's offsets at or above the previous chunk's.

    Labels of a partition are read in offset order, so joined examples mostly arrive sorted and
    are appended as they come; examples joined out of order (early labels whose events came
    later) are merged with the tail they overlap, one stable sort.
    """

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, chunk: Chunk) -> None:
        """Queue ``chunk`` (non-empty), sorting it by offset and merging it with the tail it overlaps."""
        if len(chunk) > 1 and (np.diff(chunk.offsets) < 0).any():
            chunk = chunk.take(np.argsort(chunk.offsets, kind="stable"))
        self.size += len(chunk)
        first = chunk.offsets[0]
        if not self.chunks or self.chunks[-1].offsets[-1] <= first:
            self.chunks.append(chunk)
            return
        # Out of order: merge with the queued chunks it overlaps (queued ones first on equal offsets).
        tail: list[Chunk] = []
        while self.chunks and self.chunks[-1].offsets[-1] > first:
            tail.append(self.chunks.pop())
        merged = Chunk.concat([*reversed(tail), chunk])
        self.chunks.append(merged.take(np.argsort(merged.offsets, kind="stable")))

    def count_below(self, limit: float, most: int) -> int:
        """How many of the lowest offsets, at most ``most``, are below ``limit``."""
        n = 0
        for chunk in self.chunks:
            if n >= most:
                break
            below = len(chunk) if limit == math.inf else int(np.searchsorted(chunk.offsets, limit, side="left"))
            n += below
            if below < len(chunk):
                break
        return min(n, most)

    def oldest_joined(self, count: int) -> float:
        """The earliest join time among the ``count`` lowest offsets."""
        oldest, need = math.inf, count
        for chunk in self.chunks:
            if need <= 0:
                break
            oldest = min(oldest, float(chunk.joined_at[:need].min()))
            need -= len(chunk)
        return oldest

    def pop(self, count: int) -> Chunk:
        """Remove and return the ``count`` lowest offsets (views of queued arrays where they lie in one
        chunk: nothing writes to a queued array, :meth:`add` makes new ones)."""
        parts: list[Chunk] = []
        need = count
        while need:
            chunk = self.chunks[0]
            if len(chunk) <= need:
                parts.append(self.chunks.popleft())
                need -= len(chunk)
            else:
                parts.append(chunk.rows(0, need))
                self.chunks[0] = chunk.rows(need)
                need = 0
        self.size -= count
        return Chunk.concat(parts)

    def everything(self) -> Chunk | None:
        """Every queued example in offset order, without removing them; None when empty."""
        return Chunk.concat(list(self.chunks)) if self.chunks else None
