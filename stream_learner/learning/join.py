"""Join buffer: predicted events wait here for their labels, early labels for their events.

Guarantees:
- Every label meets its event at most once: a second label for an id that is
  waiting, joined or already early is counted as a duplicate and dropped.
- Memory is bounded: at most ``max_pending`` waiting events and at most
  ``max_pending`` early labels, whose ids take at most ``max_early_label_bytes``
  together; beyond that the oldest is evicted first (counted), and anything older
  than ``ttl_s`` expires (counted).
- Pending events are rows of numpy arrays (:mod:`.pending_events`), found by their
  keys (:mod:`.event_keys`): an id longer than 16 bytes is kept as its 16-byte digest,
  so a pending event (and a remembered joined id) costs the same whatever the length
  of its id, and ``max_pending`` bounds them.
- Early labels keep their ids as strings (:mod:`.early_labels`), so their bound in
  bytes is what bounds them for long ids; no other reference keeps the id of a label
  that left the buffer (joined, expired or evicted) alive.
- Every joined example carries its label's position (partition, offset), so the
  trainer can order steps by the data rather than by arrival timing; the lowest
  offset still waiting for its event is known per partition.
- ``compiled=True`` and ``compiled=False`` (the id index of :mod:`.id_index`) give the
  same examples, counters and state for the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stream_learner.learning.early_labels import MAX_EARLY_LABEL_BYTES, EarlyLabels, id_bytes
from stream_learner.learning.event_keys import EventKeys, event_keys, has_repeats, key_tensors, keys_from_state
from stream_learner.learning.examples import UNLABELED_PARTITION, Examples
from stream_learner.learning.joined_ids import JoinedIds
from stream_learner.learning.pending_events import PendingEvents

__all__ = ["MAX_EARLY_LABEL_BYTES", "UNLABELED_PARTITION", "Examples", "JoinBuffer", "JoinCounters", "id_bytes"]


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
    events_defaulted: int = 0


class JoinBuffer:
    """Bounded two-sided join of predicted events and labels, keyed by event id (non-empty strings).

    ``max_pending`` bounds the waiting events, the early labels and the remembered joined ids,
    each; ``max_early_label_bytes`` bounds the memory of the early labels' ids as well
    (:func:`id_bytes` each). A label whose id alone exceeds it is not kept (counted as evicted).
    ``compiled`` picks the id index: the compiled hash table, or a Python dict.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        max_pending: int,
        ttl_s: float,
        *,
        default_label: float | None = None,
        max_early_label_bytes: int = MAX_EARLY_LABEL_BYTES,
        compiled: bool = True,
    ) -> None:
        if max_early_label_bytes <= 0:
            raise ValueError(f"max_early_label_bytes must be positive, got {max_early_label_bytes}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.max_pending, self.ttl_s = max_pending, ttl_s
        self.max_early_label_bytes = max_early_label_bytes
        self.default_label = default_label
        self.compiled = compiled
        self.counters = JoinCounters()
        self._pending = PendingEvents(input_dim, output_dim, compiled=compiled)
        self._early = EarlyLabels(max_pending, max_early_label_bytes)
        self._joined = JoinedIds(max_pending, compiled=compiled)
        self._unlabeled: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        """Events dropped without a label (features, scores, arrived), kept for take_unlabeled."""

    @property
    def pending_events(self) -> int:
        """Predicted events waiting for a label."""
        return self._pending.live

    @property
    def early_labels(self) -> int:
        """Labels waiting for their event."""
        return len(self._early)

    @property
    def early_label_bytes(self) -> int:
        """Memory of the waiting labels' ids (:func:`id_bytes`), at most ``max_early_label_bytes``."""
        return self._early.bytes

    def any_early(self, ids: list[str]) -> bool:
        """Whether a label of one of ``ids`` is waiting for its event."""
        early = self._early
        return bool(early) and any(event_id in early for event_id in ids)

    @property
    def _features(self) -> np.ndarray:
        """The float32 rows the pending events' features are stored in."""
        return self._pending.features

    def add_predictions(self, ids: list[str], features: np.ndarray, scores: np.ndarray, now: float) -> Examples:
        """Store predicted events; those whose label came early are joined and returned."""
        matched, early_rows = self._early.take(ids)
        keys = event_keys(ids)
        if matched:
            self._joined.remember(keys.take(np.asarray(matched, np.int64)), now)
            keep = np.ones(len(ids), bool)
            keep[matched] = False
            rows = np.flatnonzero(keep)
            self._store(keys.take(rows), features[rows], scores[rows], now)
        else:
            self._store(keys, features, scores, now)
        self.counters.labels_joined += len(matched)
        found = np.asarray(early_rows, np.float64).reshape(-1, 4)
        return Examples(
            features[matched],
            found[:, 0],
            scores[matched],
            found[:, 2].astype(np.int64),
            found[:, 3].astype(np.int64),
            np.full(len(matched), now),  # the event arrives now, its label was already in: no delay
        )

    def add_labels(
        self,
        ids: list[str],
        labels: np.ndarray,
        now: float,
        partition: int | np.ndarray = 0,
        offsets: np.ndarray | None = None,
    ) -> Examples:
        """Join labels (read at ``offsets`` of ``partition``, one or one per label) to waiting events;
        the rest wait or are duplicates."""
        offsets = np.arange(len(ids), dtype=np.int64) if offsets is None else offsets
        partitions = np.broadcast_to(np.asarray(partition, np.int64), (len(ids),))
        pending = self._pending
        keys = event_keys(ids)
        positions = pending.find(keys)
        hit_rows = self._first_label_of_each_event(positions)
        slots = positions[hit_rows]
        joined = Examples(
            pending.features[slots],
            labels[hit_rows],
            pending.scores[slots],
            partitions[hit_rows],
            offsets[hit_rows],
            pending.arrived[slots],
        )
        pending.remove(slots)
        self._joined.remember(keys.take(hit_rows), now)
        if len(hit_rows) < len(ids):
            missed = np.flatnonzero(positions < 0)
            self._keep_early(ids, keys, missed, labels, now, partitions, offsets)
        self.counters.labels_joined += len(hit_rows)
        return joined

    def _first_label_of_each_event(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the labels that found a waiting event; a second label for the same event in
        this batch is a duplicate of the first (counted)."""
        hit_rows = np.flatnonzero(positions >= 0)
        if has_repeats(positions[hit_rows]):
            _, first = np.unique(positions[hit_rows], return_index=True)
            self.counters.labels_duplicate += len(hit_rows) - len(first)
            hit_rows = hit_rows[np.sort(first)]
        return hit_rows

    def _keep_early(
        self,
        ids: list[str],
        keys: EventKeys,
        missed: np.ndarray,
        labels: np.ndarray,
        now: float,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> None:
        """The labels at rows ``missed`` (no waiting event) wait for their event, unless their event
        joined already or a label for it waits (duplicates, counted)."""
        was_joined = self._joined.contains(keys.take(missed))
        for row, joined_before in zip(missed.tolist(), was_joined.tolist(), strict=True):
            event_id = ids[row]
            if joined_before or event_id in self._early:
                self.counters.labels_duplicate += 1
            else:
                label, partition, offset = float(labels[row]), int(partitions[row]), int(offsets[row])
                self.counters.labels_evicted += self._early.add(event_id, label, now, partition, offset)

    def lowest_waiting_label(self, partition: int) -> tuple[int, float] | None:
        """Offset and arrival time of the lowest-offset label of ``partition`` still waiting for its event."""
        return self._early.lowest_waiting(partition)

    def expire(self, now: float) -> None:
        """Drop events, early labels and remembered ids older than ``ttl_s``."""
        horizon = now - self.ttl_s
        expired = self._pending.oldest(self._pending.live, horizon)
        if len(expired):
            self._drop_events(expired)
            self.counters.events_expired += len(expired)
        self.counters.labels_expired += self._early.expire(horizon)
        self._joined.forget_before(horizon)

    def take_unlabeled(self) -> Examples:
        """Events dropped without a label, labelled ``default_label`` (missing-label policy "default")."""
        parts, self._unlabeled = self._unlabeled, []
        features = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, self.input_dim), np.float32)
        scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, self.output_dim), np.float32)
        n = len(features)
        examples = Examples(
            features,
            np.full(n, self.default_label or 0.0),
            scores,
            np.full(n, UNLABELED_PARTITION, np.int64),
            np.arange(self.counters.events_defaulted, self.counters.events_defaulted + n, dtype=np.int64),
        )
        self.counters.events_defaulted += n
        return examples

    def _store(self, keys: EventKeys, features: np.ndarray, scores: np.ndarray, now: float) -> None:
        """Store predicted events, newest last; a repeated id replaces its waiting event (counted)."""
        if not len(keys.lengths):
            return
        pending = self._pending
        self.counters.events_duplicate += pending.put(keys, features, scores, now)
        over = pending.live - self.max_pending
        if over > 0:
            self._drop_events(pending.oldest(over))
            self.counters.events_evicted += over

    def _drop_events(self, positions: np.ndarray) -> None:
        pending = self._pending
        if self.default_label is not None:
            self._unlabeled.append((pending.features[positions], pending.scores[positions], pending.arrived[positions]))
        pending.remove(positions)

    def state_dict(self) -> dict[str, object]:
        """Everything waiting, oldest first, as tensors and lists (loadable with ``weights_only=True``).

        Pending events' ids are their keys: ``event_keys`` (uint8 ``[n, width]``, UTF-8 bytes
        zero-padded, or a digest) and ``event_key_lengths`` (the byte length; 65535 for a digest);
        the ids of joined events likewise (``joined_keys``, ``joined_key_lengths``).
        """
        pending = self._pending
        order = pending.order()
        event_keys_, event_key_lengths = key_tensors(pending.words[order], pending.lengths[order])
        parts = [(pending.features[order], pending.scores[order], pending.arrived[order]), *self._unlabeled]
        return {
            "event_keys": event_keys_,
            "event_key_lengths": event_key_lengths,
            "unlabeled": sum(len(p[0]) for p in self._unlabeled),
            "features": _stacked([p[0] for p in parts]),
            "scores": _stacked([p[1] for p in parts]),
            "arrived": _stacked([p[2] for p in parts]),
            **self._early.state_dict(),
            **self._joined.state_dict(),
            "counters": dict(vars(self.counters)),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the contents with a :meth:`state_dict` (also one that lists ``event_ids`` or
        ``joined_ids`` as strings).

        Early labels beyond this buffer's bounds (a state saved with larger ones) are evicted, oldest first, counted.
        """
        unlabeled: int = state["unlabeled"]  # type: ignore[assignment]  # an int in a state dict
        features = state["features"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        scores = state["scores"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        arrived = state["arrived"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        words, lengths = keys_from_state(state, "event")
        n = len(lengths)
        self._pending = PendingEvents(self.input_dim, self.output_dim, compiled=self.compiled)
        self._pending.load(words, lengths, features[:n], scores[:n], arrived[:n])
        self._unlabeled = [(features[n:].copy(), scores[n:].copy(), arrived[n:].copy())] if unlabeled else []
        self._joined = JoinedIds(self.max_pending, compiled=self.compiled)
        self._joined.load_state_dict(state)
        self.counters = JoinCounters(**state["counters"])  # type: ignore[arg-type]  # a dict of ints in a state dict
        self._early = EarlyLabels(self.max_pending, self.max_early_label_bytes)
        self.counters.labels_evicted += self._early.load_state_dict(state)


def _stacked(parts: list[np.ndarray]) -> torch.Tensor:
    """The rows of ``parts`` as one tensor; a lone part, a fresh copy already, is not copied again
    (the snapshot that calls this holds intake)."""
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))
