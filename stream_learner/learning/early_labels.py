"""Early labels: labels that came before their event wait here, keyed by the event id.

Bounded by a count and by the memory of their ids (:func:`id_bytes`), oldest evicted first.
The ids stay strings (a label must find its event by id); nothing but the store refers to
the id of a waiting label, so one that leaves (joined, expired or evicted) frees its id. The
lowest offset still waiting is known per partition (a heap whose stale entries hold no id).
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import OrderedDict
from typing import Final

import torch

MAX_EARLY_LABEL_BYTES = 128 * 1024 * 1024
"""Default bound of the early labels' ids, in bytes of memory (:func:`id_bytes`).

Above what ordinary ids need at the default ``max_pending`` of 1M: 36-character UUIDs take
85 bytes each as Python strings, 81 MiB for 1M, so ``max_pending`` stays the bound for them
(ids of up to about 85 characters). Long ids hit this one instead: 100 KB ids stop at about
1300 waiting labels (128 MiB) where ``max_pending`` alone let them take 100 GB. 3 % of the
4 GiB memory limit of deploy/k8s."""

EarlyLabel = tuple[float, float, int, int, int, int]
"""A waiting label (the value of the store, keyed by the event id): label, arrival time,
partition, offset, size (:func:`id_bytes` of its id, counted while it waits) and ticket (unique
per stored label, in the store's set of waiting tickets while it waits).

A plain tuple of numbers, which the garbage collector stops tracking (a NamedTuple or a
dataclass it tracks for good, and each full collection would walk every waiting label)."""
_ARRIVED: Final = 1
_SIZE: Final = 4
_TICKET: Final = 5
_HEAP_SLACK = 1024


def id_bytes(event_id: str) -> int:
    """Memory an id takes as a Python string: its characters (1, 2 or 4 bytes each) plus the
    string's header (49 bytes for ASCII on CPython 3.11). What ``max_early_label_bytes`` counts."""
    return sys.getsizeof(event_id)


class EarlyLabels:
    """Waiting labels in arrival order, at most ``max_count``, their ids within ``max_bytes``."""

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count, self.max_bytes = max_count, max_bytes
        self.labels: OrderedDict[str, EarlyLabel] = OrderedDict()
        self.bytes = 0
        """Memory of the waiting labels' ids (:func:`id_bytes`), at most ``max_bytes``."""
        self._waiting_tickets: set[int] = set()
        self._heaps: dict[int, list[tuple[int, int, float]]] = {}
        """Per partition, (offset, ticket, arrived) of waiting labels, stale entries (ticket no
        longer waiting) included: they hold no id, so a label that left costs a few bytes until
        the next rebuild, not its id."""
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self.labels

    def take(self, ids: list[str]) -> tuple[list[int], list[tuple[float, float, int, int]]]:
        """The rows of ``ids`` whose label waits, and those labels (label, arrival time, partition,
        offset), which leave the store."""
        rows: list[int] = []
        found: list[tuple[float, float, int, int]] = []
        if self.labels:
            pop = self.labels.pop
            for row, event_id in enumerate(ids):
                early = pop(event_id, None)
                if early is not None:
                    rows.append(row)
                    found.append(early[:4])
                    self._left(early)
        return rows, found

    def add(self, event_id: str, label: float, now: float, partition: int, offset: int) -> int:
        """Keep a label (its id not yet waiting) until its event comes, evicting the oldest to stay
        within both bounds; how many were evicted (the label itself, if its id alone exceeds ``max_bytes``)."""
        size = id_bytes(event_id)
        if size > self.max_bytes:
            return 1  # it could only wait alone, after evicting every other
        evicted = 0
        if len(self.labels) >= self.max_count or self.bytes + size > self.max_bytes:
            evicted = self.evict(self.max_count - 1, self.max_bytes - size)
        ticket = next(self._tickets)
        self.labels[event_id] = (label, now, partition, offset, size, ticket)
        self.bytes += size
        self._waiting_tickets.add(ticket)
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (offset, ticket, now))
        if len(heap) > 2 * len(self.labels) + _HEAP_SLACK:
            self._rebuild_heaps()
        return evicted

    def evict(self, count: int, size: int) -> int:
        """Evict the oldest until at most ``count`` wait, their ids within ``size`` bytes; how many."""
        evicted = 0
        while self.labels and (len(self.labels) > count or self.bytes > size):
            self._left(self.labels.popitem(last=False)[1])
            evicted += 1
        return evicted

    def expire(self, horizon: float) -> int:
        """Drop the labels that arrived before ``horizon``; how many."""
        expired = 0
        while self.labels and next(iter(self.labels.values()))[_ARRIVED] < horizon:
            self._left(self.labels.popitem(last=False)[1])
            expired += 1
        return expired

    def lowest_waiting(self, partition: int) -> tuple[int, float] | None:
        """Offset and arrival time of the lowest-offset label of ``partition`` still waiting."""
        heap = self._heaps.get(partition)
        while heap:
            offset, ticket, arrived = heap[0]
            if ticket in self._waiting_tickets:
                return offset, arrived
            heapq.heappop(heap)
        return None

    def state_dict(self) -> dict[str, object]:
        """``early_ids`` (oldest first) and ``early`` (float64 ``[n, 4]``: label, arrival time, partition, offset)."""
        items = list(self.labels.items())
        return {
            "early_ids": [k for k, _ in items],
            "early": torch.tensor([v[:4] for _, v in items], dtype=torch.float64).reshape(-1, 4),
        }

    def load_state_dict(self, state: dict[str, object]) -> int:
        """Replace the contents with a :meth:`state_dict`, evicting the oldest beyond the bounds; how many."""
        ids: list[str] = state["early_ids"]  # type: ignore[assignment]  # a list of str in a state dict
        rows: list[list[float]] = state["early"].tolist()  # type: ignore[attr-defined]  # a tensor in a state dict
        tickets = self._tickets
        self.labels = OrderedDict(
            (k, (v[0], v[1], int(v[2]), int(v[3]), id_bytes(k), next(tickets))) for k, v in zip(ids, rows, strict=True)
        )
        self.bytes = sum(e[_SIZE] for e in self.labels.values())
        self._waiting_tickets = {e[_TICKET] for e in self.labels.values()}
        evicted = self.evict(self.max_count, self.max_bytes)
        self._rebuild_heaps()
        return evicted

    def _left(self, early: EarlyLabel) -> None:
        """Account for a label that left the store (its heap entry turns stale)."""
        self._waiting_tickets.discard(early[_TICKET])
        self.bytes -= early[_SIZE]

    def _rebuild_heaps(self) -> None:
        """Drop stale heap entries; keeps the heaps within about twice the waiting labels."""
        self._heaps = {}
        for _, arrived, partition, offset, _, ticket in self.labels.values():
            self._heaps.setdefault(partition, []).append((offset, ticket, arrived))
        for heap in self._heaps.values():
            heapq.heapify(heap)
