"""Join buffer: predicted events wait here for their labels, early labels for their events.

Guarantees:
- Every label meets its event at most once: a second label for an id that is
  waiting, joined or already early is counted as a duplicate and dropped.
- Memory is bounded: at most ``max_pending`` waiting events and at most
  ``max_pending`` early labels; beyond that the oldest is evicted first (counted),
  and anything older than ``ttl_s`` expires (counted).
- Features are kept in preallocated float32 arrays, never as Python lists.
- Every joined example carries its label's position (partition, offset), so the
  trainer can order steps by the data rather than by arrival timing; the lowest
  offset still waiting for its event is known per partition.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import heapq

import numpy as np
import torch

UNLABELED_PARTITION = -1
"""Label partition of examples labelled by the missing-label policy (they have no label record)."""


@dataclass(frozen=True)
class Examples:
    """Labelled examples, row i of each array together."""

    features: np.ndarray
    """float32 ``[k, input_dim]``."""
    labels: np.ndarray
    """float64 ``[k]``."""
    scores: np.ndarray
    """float32 ``[k, output_dim]``: what the model predicted before the label was known."""
    partitions: np.ndarray | None = None
    """int64 ``[k]``: partition of each label record (``UNLABELED_PARTITION`` for defaulted events)."""
    offsets: np.ndarray | None = None
    """int64 ``[k]``: offset of each label record in its partition."""

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class JoinCounters:
    """What happened to events and labels in the buffer, since the service first started."""

    labels_joined: int = 0
    labels_duplicate: int = 0
    labels_expired: int = 0
    labels_evicted: int = 0
    events_expired: int = 0
    events_evicted: int = 0
    events_duplicate: int = 0
    events_defaulted: int = field(default=0)


class JoinBuffer:
    """Bounded two-sided join of predicted events and labels, keyed by event id."""

    def __init__(self, input_dim: int, output_dim: int, max_pending: int, ttl_s: float, *, default_label: float | None = None) -> None:
        self.input_dim, self.output_dim = input_dim, output_dim
        self.max_pending, self.ttl_s = max_pending, ttl_s
        self.default_label = default_label
        self.counters = JoinCounters()
        self._slot_of: OrderedDict[str, int] = OrderedDict()
        self._early: OrderedDict[str, tuple[float, float, int, int]] = OrderedDict()
        self._early_heaps: dict[int, list[tuple[int, str]]] = {}
        self._joined: OrderedDict[str, float] = OrderedDict()
        self._features = np.zeros((0, input_dim), np.float32)
        self._scores = np.zeros((0, output_dim), np.float32)
        self._arrived = np.zeros(0, np.float64)
        self._free: list[int] = []
        self._unlabeled: list[int] = []

    @property
    def pending_events(self) -> int:
        """Predicted events waiting for a label."""
        return len(self._slot_of)

    @property
    def early_labels(self) -> int:
        """Labels waiting for their event."""
        return len(self._early)

    def add_predictions(self, ids: list[str], features: np.ndarray, scores: np.ndarray, now: float) -> Examples:
        """Store predicted events; those whose label came early are joined and returned."""
        matched: list[int] = []
        early_rows: list[tuple[float, float, int, int]] = []
        for row, event_id in enumerate(ids):
            early = self._early.pop(event_id, None)
            if early is not None:
                matched.append(row)
                early_rows.append(early)
                self._remember_joined(event_id, now)
                continue
            self._store(event_id, features[row], scores[row], now)
        self.counters.labels_joined += len(matched)
        found = np.asarray(early_rows, np.float64).reshape(-1, 4)
        return Examples(
            features[matched], found[:, 0], scores[matched], found[:, 2].astype(np.int64), found[:, 3].astype(np.int64)
        )

    def add_labels(
        self, ids: list[str], labels: np.ndarray, now: float, partition: int = 0, offsets: np.ndarray | None = None
    ) -> Examples:
        """Join labels (read from ``partition`` at ``offsets``) to waiting events; the rest wait or are duplicates."""
        offsets = np.arange(len(ids), dtype=np.int64) if offsets is None else offsets
        slots: list[int] = []
        rows: list[int] = []
        for row, event_id in enumerate(ids):
            slot = self._slot_of.pop(event_id, None)
            if slot is not None:
                slots.append(slot)
                rows.append(row)
                self._remember_joined(event_id, now)
            elif event_id in self._joined or event_id in self._early:
                self.counters.labels_duplicate += 1
            else:
                self._store_early(event_id, float(labels[row]), now, partition, int(offsets[row]))
        joined = Examples(
            self._features[slots], labels[rows], self._scores[slots], np.full(len(rows), partition, np.int64), offsets[rows]
        )
        self._free.extend(slots)
        self.counters.labels_joined += len(rows)
        return joined

    def lowest_waiting_label(self, partition: int) -> tuple[int, float] | None:
        """Offset and arrival time of the lowest-offset label of ``partition`` still waiting for its event."""
        heap = self._early_heaps.get(partition)
        while heap:
            offset, event_id = heap[0]
            early = self._early.get(event_id)
            if early is not None and early[2] == partition and early[3] == offset:
                return offset, early[1]
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> None:
        """Drop events, early labels and remembered ids older than ``ttl_s``."""
        horizon = now - self.ttl_s
        while self._slot_of and self._arrived[next(iter(self._slot_of.values()))] < horizon:
            self._drop_oldest_event()
            self.counters.events_expired += 1
        while self._early and next(iter(self._early.values()))[1] < horizon:
            self._early.popitem(last=False)
            self.counters.labels_expired += 1
        while self._joined and next(iter(self._joined.values())) < horizon:
            self._joined.popitem(last=False)

    def take_unlabeled(self) -> Examples:
        """Events dropped without a label, labelled ``default_label`` (missing-label policy "default")."""
        slots, self._unlabeled = self._unlabeled, []
        examples = Examples(
            self._features[slots],
            np.full(len(slots), self.default_label or 0.0),
            self._scores[slots],
            np.full(len(slots), UNLABELED_PARTITION, np.int64),
            np.arange(self.counters.events_defaulted, self.counters.events_defaulted + len(slots), dtype=np.int64),
        )
        self._free.extend(slots)
        self.counters.events_defaulted += len(slots)
        return examples

    def _store(self, event_id: str, features: np.ndarray, scores: np.ndarray, now: float) -> None:
        slot = self._slot_of.pop(event_id, None)
        if slot is not None:
            self.counters.events_duplicate += 1
        else:
            if len(self._slot_of) >= self.max_pending:
                self._drop_oldest_event()
                self.counters.events_evicted += 1
            slot = self._allocate()
        self._slot_of[event_id] = slot
        self._features[slot], self._scores[slot], self._arrived[slot] = features, scores, now

    def _store_early(self, event_id: str, label: float, now: float, partition: int, offset: int) -> None:
        if len(self._early) >= self.max_pending:
            self._early.popitem(last=False)
            self.counters.labels_evicted += 1
        self._early[event_id] = (label, now, partition, offset)
        heap = self._early_heaps.setdefault(partition, [])
        heapq.heappush(heap, (offset, event_id))
        if len(heap) > 2 * len(self._early) + 1024:
            self._rebuild_early_heaps()

    def _rebuild_early_heaps(self) -> None:
        """Drop stale heap entries (labels joined or expired since); keeps the heaps within 2x the early labels."""
        self._early_heaps = {}
        for event_id, (_, _, partition, offset) in self._early.items():
            self._early_heaps.setdefault(partition, []).append((offset, event_id))
        for heap in self._early_heaps.values():
            heapq.heapify(heap)

    def _remember_joined(self, event_id: str, now: float) -> None:
        self._joined[event_id] = now
        if len(self._joined) > self.max_pending:
            self._joined.popitem(last=False)

    def _drop_oldest_event(self) -> None:
        _, slot = self._slot_of.popitem(last=False)
        if self.default_label is not None:
            self._unlabeled.append(slot)
        else:
            self._free.append(slot)

    def _allocate(self) -> int:
        if not self._free:
            self._grow()
        return self._free.pop()

    def _grow(self) -> None:
        old = len(self._arrived)
        new = min(max(1024, old * 2), self.max_pending + 1 + len(self._unlabeled))
        new = max(new, old + 1)
        self._features = _resized(self._features, new)
        self._scores = _resized(self._scores, new)
        self._arrived = _resized(self._arrived, new)
        self._free.extend(range(new - 1, old - 1, -1))

    def state_dict(self) -> dict[str, object]:
        """Everything waiting, oldest first, as tensors and lists (loadable with ``weights_only=True``)."""
        slots = list(self._slot_of.values()) + self._unlabeled
        early = list(self._early.items())
        return {
            "event_ids": list(self._slot_of.keys()),
            "unlabeled": len(self._unlabeled),
            "features": torch.from_numpy(self._features[slots].copy()),
            "scores": torch.from_numpy(self._scores[slots].copy()),
            "arrived": torch.from_numpy(self._arrived[slots].copy()),
            "early_ids": [k for k, _ in early],
            "early": torch.tensor([v for _, v in early], dtype=torch.float64).reshape(-1, 4),
            "joined_ids": list(self._joined.keys()),
            "joined_at": torch.tensor(list(self._joined.values()), dtype=torch.float64),
            "counters": dict(vars(self.counters)),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the contents with a :meth:`state_dict`."""
        ids: list[str] = state["event_ids"]  # type: ignore[assignment]
        unlabeled: int = state["unlabeled"]  # type: ignore[assignment]
        features = state["features"].numpy()  # type: ignore[attr-defined]
        scores = state["scores"].numpy()  # type: ignore[attr-defined]
        arrived = state["arrived"].numpy()  # type: ignore[attr-defined]
        n = len(ids) + unlabeled
        self._features, self._scores, self._arrived = features.copy(), scores.copy(), arrived.copy()
        self._free = []
        self._slot_of = OrderedDict(zip(ids, range(len(ids))))
        self._unlabeled = list(range(len(ids), n))
        early = state["early"].tolist()  # type: ignore[attr-defined]
        self._early = OrderedDict(
            (k, (v[0], v[1], int(v[2]), int(v[3]))) for k, v in zip(state["early_ids"], early)  # type: ignore[call-overload]
        )
        self._rebuild_early_heaps()
        self._joined = OrderedDict(zip(state["joined_ids"], state["joined_at"].tolist()))  # type: ignore[call-overload, attr-defined]
        self.counters = JoinCounters(**state["counters"])  # type: ignore[arg-type]


def _resized(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), array.dtype)
    out[: len(array)] = array
    return out
