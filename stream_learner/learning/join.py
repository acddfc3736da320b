"""Join buffer: predicted events wait here for their labels, early labels for their events.

Guarantees:
- Every label meets its event at most once: a second label for an id that is
  waiting, joined or already early is counted as a duplicate and dropped.
- Memory is bounded: at most ``max_pending`` waiting events and at most
  ``max_pending`` early labels, whose ids take at most ``max_early_label_bytes``
  together; beyond that the oldest is evicted first (counted), and anything older
  than ``ttl_s`` expires (counted).
- Pending events cost no Python object each: features, scores, arrival times and ids
  live in numpy arrays with a numpy hash table from id to row (about
  ``4 * input_dim + 64`` bytes per pending event; see ``_PendingEvents``). An id longer
  than 16 bytes is kept as its 16-byte digest, so a pending event (and a remembered
  joined id) costs the same whatever the length of its id: ``max_pending`` bounds them.
- Early labels keep their ids as strings (a label must find its event by id), so their
  bound in bytes is what bounds them for long ids; no other reference keeps the id of
  a label that left the buffer (joined, expired or evicted) alive.
- Every joined example carries its label's position (partition, offset), so the
  trainer can order steps by the data rather than by arrival timing; the lowest
  offset still waiting for its event is known per partition.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from stream_learner.kernels.id_table import find_rows, insert_rows

UNLABELED_PARTITION = -1
"""Label partition of examples labelled by the missing-label policy (they have no label record)."""
MAX_EARLY_LABEL_BYTES = 128 * 1024 * 1024
"""Default bound of the early labels' ids, in bytes of memory (:func:`id_bytes`).

Above what ordinary ids need at the default ``max_pending`` of 1M: 36-character UUIDs take
85 bytes each as Python strings, 81 MiB for 1M, so ``max_pending`` stays the bound for them
(ids of up to about 85 characters). Long ids hit this one instead: 100 KB ids stop at about
1300 waiting labels (128 MiB) where ``max_pending`` alone let them take 100 GB. 3 % of the
4 GiB memory limit of deploy/k8s."""


def id_bytes(event_id: str) -> int:
    """Memory an id takes as a Python string: its characters (1, 2 or 4 bytes each) plus the
    string's header (49 bytes for ASCII on CPython 3.11). What ``max_early_label_bytes`` counts."""
    return sys.getsizeof(event_id)


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
    event_arrived: np.ndarray | None = None
    """float64 ``[k]``: epoch seconds each event arrived (for the label-delay metric), where known;
    for a label that came before its event, the time the event arrived and joined it."""

    def __len__(self) -> int:
        return len(self.labels)


_EarlyLabel = tuple[float, float, int, int, int, int]
"""A label that waits for its event (the value of the early store, keyed by the event id): label,
arrival time, partition, offset, size (:func:`id_bytes` of its id, counted while it waits) and
ticket (unique per stored label, in the store's set of waiting tickets while it waits).

A plain tuple of numbers, which the garbage collector stops tracking (a NamedTuple or a
dataclass it tracks for good: storing 200k early labels took twice as long, and each full
collection walks every waiting label)."""
_ARRIVED, _SIZE, _TICKET = 1, 4, 5


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
    """Bounded two-sided join of predicted events and labels, keyed by event id.

    ``max_pending`` bounds the waiting events, the early labels and the remembered joined ids,
    each; ``max_early_label_bytes`` bounds the memory of the early labels' ids as well
    (:func:`id_bytes` each). A label whose id alone exceeds it is not kept (counted as evicted).
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
    ) -> None:
        if max_early_label_bytes <= 0:
            raise ValueError(f"max_early_label_bytes must be positive, got {max_early_label_bytes}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.max_pending, self.ttl_s = max_pending, ttl_s
        self.max_early_label_bytes = max_early_label_bytes
        self.default_label = default_label
        self.counters = JoinCounters()
        self._pending = _PendingEvents(input_dim, output_dim)
        self._early: OrderedDict[str, _EarlyLabel] = OrderedDict()
        self._early_bytes = 0
        self._waiting_tickets: set[int] = set()
        self._early_heaps: dict[int, list[tuple[int, int, float]]] = {}
        """Per partition, (offset, ticket, arrived) of early labels, stale entries (ticket no longer
        waiting) included: they hold no id, so a label that left the store costs a few bytes until
        the next rebuild, not its id."""
        self._tickets = itertools.count()
        self._joined = _PendingEvents(0, 0)
        """Ids of joined events (a later label for one is a duplicate): keys and join times, no features."""
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
        return self._early_bytes

    @property
    def _features(self) -> np.ndarray:
        """The float32 rows the pending events' features are stored in."""
        return self._pending.features

    def add_predictions(self, ids: list[str], features: np.ndarray, scores: np.ndarray, now: float) -> Examples:
        """Store predicted events; those whose label came early are joined and returned."""
        matched: list[int] = []
        early_rows: list[tuple[float, float, int, int]] = []
        if self._early:
            pop = self._early.pop
            for row, event_id in enumerate(ids):
                early = pop(event_id, None)
                if early is not None:
                    matched.append(row)
                    early_rows.append(early[:4])
                    self._left_early(early)
        keys = _keys(ids)
        if matched:
            self._remember_joined(keys.take(np.asarray(matched, np.int64)), now)
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
        """Join labels (read at ``offsets`` of ``partition``, one or one per label) to waiting events; the rest wait or are duplicates."""
        offsets = np.arange(len(ids), dtype=np.int64) if offsets is None else offsets
        partitions = np.broadcast_to(np.asarray(partition, np.int64), (len(ids),))
        pending = self._pending
        keys = _keys(ids)
        positions = pending.find(keys)
        hit_rows = np.flatnonzero(positions >= 0)
        if _has_repeats(positions[hit_rows]):
            # A second label for the same waiting event in this batch is a duplicate of the first.
            _, first = np.unique(positions[hit_rows], return_index=True)
            self.counters.labels_duplicate += len(hit_rows) - len(first)
            hit_rows = hit_rows[np.sort(first)]
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
        self._remember_joined(keys.take(hit_rows), now)
        if len(hit_rows) < len(ids):
            missed = np.flatnonzero(positions < 0)
            was_joined = self._joined.find(keys.take(missed)) >= 0
            for row, joined_before in zip(missed.tolist(), was_joined.tolist()):
                event_id = ids[row]
                if joined_before or event_id in self._early:
                    self.counters.labels_duplicate += 1
                else:
                    self._store_early(event_id, float(labels[row]), now, int(partitions[row]), int(offsets[row]))
        self.counters.labels_joined += len(hit_rows)
        return joined

    def lowest_waiting_label(self, partition: int) -> tuple[int, float] | None:
        """Offset and arrival time of the lowest-offset label of ``partition`` still waiting for its event."""
        heap = self._early_heaps.get(partition)
        while heap:
            offset, ticket, arrived = heap[0]
            if ticket in self._waiting_tickets:
                return offset, arrived
            heapq.heappop(heap)
        return None

    def expire(self, now: float) -> None:
        """Drop events, early labels and remembered ids older than ``ttl_s``."""
        horizon = now - self.ttl_s
        expired = self._pending.oldest(self._pending.live, horizon)
        if len(expired):
            self._drop_events(expired)
            self.counters.events_expired += len(expired)
        while self._early and next(iter(self._early.values()))[_ARRIVED] < horizon:
            self._left_early(self._early.popitem(last=False)[1])
            self.counters.labels_expired += 1
        forgotten = self._joined.oldest(self._joined.live, horizon)
        if len(forgotten):
            self._joined.remove(forgotten)

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

    def _store(self, keys: _Keys, features: np.ndarray, scores: np.ndarray, now: float) -> None:
        """Store predicted events, newest last; a repeated id replaces its waiting event (counted)."""
        n = len(keys.lengths)
        if not n:
            return
        pending = self._pending
        waiting = pending.find(keys)
        waiting = waiting[waiting >= 0]
        replaced = np.unique(waiting) if len(waiting) else waiting
        if len(replaced):
            pending.remove(replaced)
        kept = n
        if _has_repeats(keys.hashes):
            _, last_from_end = np.unique(keys.hashes[::-1], return_index=True)
            rows = np.sort(n - 1 - last_from_end)  # the last of each repeated id in this batch
            rows = self._distinct_keys(keys, rows)
            kept = len(rows)
            keys, features, scores = keys.take(rows), features[rows], scores[rows]
        # As one at a time: each id already waiting, and each repeat in this batch, replaces its event.
        self.counters.events_duplicate += n - kept + len(replaced)
        pending.append(keys, features, scores, now)
        over = pending.live - self.max_pending
        if over > 0:
            self._drop_events(pending.oldest(over))
            self.counters.events_evicted += over

    @staticmethod
    def _distinct_keys(keys: _Keys, rows: np.ndarray) -> np.ndarray:
        """``rows`` (the last row of each distinct hash) plus rows whose key differs from every kept
        row with the same hash: a true 64-bit collision keeps both ids."""
        words, lengths, hashes = keys.words, keys.lengths, keys.hashes
        keep = set(rows.tolist())
        kept_by_hash = {int(hashes[r]): r for r in rows.tolist()}
        for r in range(len(hashes)):
            if r in keep:
                continue
            k = kept_by_hash[int(hashes[r])]
            if lengths[r] != lengths[k] or (words[r] != words[k]).any():
                later = [
                    q for q in range(r + 1, len(hashes)) if lengths[q] == lengths[r] and (words[q] == words[r]).all()
                ]
                if not later:
                    keep.add(r)
        return np.asarray(sorted(keep), np.int64)

    def _drop_events(self, positions: np.ndarray) -> None:
        pending = self._pending
        if self.default_label is not None:
            self._unlabeled.append((pending.features[positions], pending.scores[positions], pending.arrived[positions]))
        pending.remove(positions)

    def _store_early(self, event_id: str, label: float, now: float, partition: int, offset: int) -> None:
        """Keep a label until its event comes, evicting the oldest (counted) to stay within both bounds."""
        size = id_bytes(event_id)
        if size > self.max_early_label_bytes:
            self.counters.labels_evicted += 1  # it could only wait alone, after evicting every other
            return
        if len(self._early) >= self.max_pending or self._early_bytes + size > self.max_early_label_bytes:
            self._evict_early(self.max_pending - 1, self.max_early_label_bytes - size)
        ticket = next(self._tickets)
        self._early[event_id] = (label, now, partition, offset, size, ticket)
        self._early_bytes += size
        self._waiting_tickets.add(ticket)
        heap = self._early_heaps.setdefault(partition, [])
        heapq.heappush(heap, (offset, ticket, now))
        if len(heap) > 2 * len(self._early) + 1024:
            self._rebuild_early_heaps()

    def _evict_early(self, count: int, size: int) -> None:
        """Evict the oldest early labels (counted) until at most ``count`` wait, their ids within ``size`` bytes."""
        while self._early and (len(self._early) > count or self._early_bytes > size):
            self._left_early(self._early.popitem(last=False)[1])
            self.counters.labels_evicted += 1

    def _left_early(self, early: _EarlyLabel) -> None:
        """Account for a label that left the early store (its heap entry turns stale)."""
        self._waiting_tickets.discard(early[_TICKET])
        self._early_bytes -= early[_SIZE]

    def _rebuild_early_heaps(self) -> None:
        """Drop stale heap entries (labels joined or expired since); keeps the heaps within 2x the early labels."""
        self._early_heaps = {}
        for _, arrived, partition, offset, _, ticket in self._early.values():
            self._early_heaps.setdefault(partition, []).append((offset, ticket, arrived))
        for heap in self._early_heaps.values():
            heapq.heapify(heap)

    def _remember_joined(self, keys: _Keys, now: float) -> None:
        """Remember the ids of ``keys`` as joined (a later label for one is a duplicate), the newest ``max_pending``."""
        if not len(keys.lengths):
            return
        joined = self._joined
        new = keys.take(np.flatnonzero(joined.find(keys) < 0))
        if _has_repeats(new.hashes):
            _, first = np.unique(new.hashes, return_index=True)
            new = new.take(self._distinct_keys(new, np.sort(first)))
        nothing = np.zeros((len(new.lengths), 0), np.float32)
        joined.append(new, nothing, nothing, now)
        over = joined.live - self.max_pending
        if over > 0:
            joined.remove(joined.oldest(over))

    def state_dict(self) -> dict[str, object]:
        """Everything waiting, oldest first, as tensors and lists (loadable with ``weights_only=True``).

        Pending events' ids are their keys: ``event_keys`` (uint8 ``[n, width]``, UTF-8 bytes
        zero-padded, or a digest) and ``event_key_lengths`` (the byte length; 65535 for a digest);
        the ids of joined events likewise (``joined_keys``, ``joined_key_lengths``).
        """
        pending = self._pending
        order = pending.order()
        event_keys, event_key_lengths = _key_tensors(pending, order)
        joined_order = self._joined.order()
        joined_keys, joined_key_lengths = _key_tensors(self._joined, joined_order)
        parts = [(pending.features[order], pending.scores[order], pending.arrived[order]), *self._unlabeled]
        early = list(self._early.items())
        return {
            "event_keys": event_keys,
            "event_key_lengths": event_key_lengths,
            "unlabeled": sum(len(p[0]) for p in self._unlabeled),
            "features": _stacked([p[0] for p in parts]),
            "scores": _stacked([p[1] for p in parts]),
            "arrived": _stacked([p[2] for p in parts]),
            "early_ids": [k for k, _ in early],
            "early": torch.tensor([v[:4] for _, v in early], dtype=torch.float64).reshape(-1, 4),
            "joined_keys": joined_keys,
            "joined_key_lengths": joined_key_lengths,
            "joined_at": torch.from_numpy(self._joined.arrived[joined_order].copy()),
            "counters": dict(vars(self.counters)),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the contents with a :meth:`state_dict` (also one that lists ``event_ids`` or ``joined_ids`` as strings).

        Early labels beyond this buffer's bounds (a state saved with larger ones) are evicted, oldest first, counted.
        """
        unlabeled: int = state["unlabeled"]  # type: ignore[assignment]
        features = state["features"].numpy()  # type: ignore[attr-defined]
        scores = state["scores"].numpy()  # type: ignore[attr-defined]
        arrived = state["arrived"].numpy()  # type: ignore[attr-defined]
        words, lengths = _keys_from_state(state, "event")
        n = len(lengths)
        self._pending = _PendingEvents(self.input_dim, self.output_dim)
        self._pending.load(words, lengths, features[:n], scores[:n], arrived[:n])
        self._unlabeled = [(features[n:].copy(), scores[n:].copy(), arrived[n:].copy())] if unlabeled else []
        early = state["early"].tolist()  # type: ignore[attr-defined]
        tickets = self._tickets
        self._early = OrderedDict(
            (k, (v[0], v[1], int(v[2]), int(v[3]), id_bytes(k), next(tickets)))
            for k, v in zip(state["early_ids"], early)  # type: ignore[call-overload]
        )
        self._early_bytes = sum(e[_SIZE] for e in self._early.values())
        self._waiting_tickets = {e[_TICKET] for e in self._early.values()}
        self._joined = _PendingEvents(0, 0)
        joined_words, joined_lengths = _keys_from_state(state, "joined")
        nothing = np.zeros((len(joined_lengths), 0), np.float32)
        self._joined.load(joined_words, joined_lengths, nothing, nothing, state["joined_at"].numpy())  # type: ignore[attr-defined]
        self.counters = JoinCounters(**state["counters"])  # type: ignore[arg-type]
        self._evict_early(self.max_pending, self.max_early_label_bytes)
        self._rebuild_early_heaps()


# --- Pending events: a compact, vectorized store ----------------------------------------
#
# Per pending event the buffer keeps its features, scores and arrival time in a ring of
# numpy arrays (insertion order; a joined event leaves a hole that the ring skips), its id
# as 8 or 16 raw bytes (a longer id as a 16-byte BLAKE2b digest) with its length, and one
# int32 cell in an open-addressing hash table from id to ring position. No Python object
# per event: about 4 * input_dim + 4 * output_dim + 18..26 bytes plus table and growth slack.

_LONG = 0xFFFF
"""Key length that marks a digested id (longer than the widest raw key)."""
_MAX_WIDTH = 16
_EMPTY = -1
_MIX = np.uint64(0xD6E8FEB86659FD93)
_WORD_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F], dtype=np.uint64)


def _encode_ids(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(keys uint8 [n, 16], lengths uint16 [n])``: UTF-8 bytes zero-padded, or a digest past 16 bytes."""
    encoded = [i.encode("utf-8", "surrogatepass") for i in ids]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    long = lengths > _MAX_WIDTH
    if long.any():
        for row in np.flatnonzero(long).tolist():
            encoded[row] = hashlib.blake2b(encoded[row], digest_size=_MAX_WIDTH).digest()
        lengths[long] = _LONG
    keys = np.zeros((len(encoded), _MAX_WIDTH), np.uint8)
    if encoded:
        packed = np.array(encoded, dtype=f"S{_MAX_WIDTH}")
        keys[:] = packed.view(np.uint8).reshape(len(encoded), _MAX_WIDTH)
    return keys, lengths.astype(np.uint16)


class _Keys(NamedTuple):
    """Encoded ids: ``words`` uint64 ``[n, 2]`` (16 key bytes), ``lengths``, 64-bit ``hashes``."""

    words: np.ndarray
    lengths: np.ndarray
    hashes: np.ndarray
    wide: bool
    """Whether some key needs more than 8 bytes (a store of 8-byte keys widens for it)."""

    def take(self, rows: np.ndarray) -> _Keys:
        return _Keys(self.words[rows], self.lengths[rows], self.hashes[rows], self.wide)


def _keys(ids: list[str]) -> _Keys:
    """Each id encoded once; every store takes the same words and hashes (see :func:`_hash`)."""
    keys, lengths = _encode_ids(ids)
    words = keys.view(np.uint64).reshape(len(ids), _MAX_WIDTH // 8)
    wide = _needs_wide(keys, lengths)
    return _Keys(words, lengths, _hash(words if wide else words[:, :1], lengths), wide)


def _needs_wide(keys: np.ndarray, lengths: np.ndarray) -> bool:
    """Whether some key (uint8 ``[n, width]``) needs more than 8 bytes: a nonzero byte past 8, or a longer length."""
    return len(lengths) > 0 and bool(keys[:, 8:].any() or (lengths > 8).any())


def _has_repeats(values: np.ndarray) -> bool:
    """Whether some value occurs twice (a sort, cheaper than ``np.unique`` with its indices)."""
    ordered = np.sort(values)
    return bool((ordered[1:] == ordered[:-1]).any())


def _words(keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Keys (uint8 ``[n, width]``, as :func:`_encode_ids` or a state dict has them) as uint64 words, 8 bytes wide where they fit."""
    n = len(lengths)
    width = _MAX_WIDTH if _needs_wide(keys, lengths) else 8
    return (
        np.ascontiguousarray(keys.reshape(n, keys.shape[-1] if keys.ndim == 2 else 0)[:, :width])
        .view(np.uint64)
        .reshape(n, width // 8)
    )


def _keys_from_state(state: dict[str, object], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Words and lengths of the ``{name}_keys`` of a state dict, or of its ``{name}_ids`` strings (older checkpoints)."""
    if f"{name}_keys" in state:
        keys = state[f"{name}_keys"].numpy()  # type: ignore[attr-defined]
        lengths = state[f"{name}_key_lengths"].numpy().astype(np.uint16)  # type: ignore[attr-defined]
    else:
        keys, lengths = _encode_ids(state[f"{name}_ids"])  # type: ignore[arg-type]
    return _words(keys, lengths), lengths


def _stacked(parts: list[np.ndarray]) -> torch.Tensor:
    """The rows of ``parts`` as one tensor; a lone part, a fresh copy already, is not copied again
    (the features of 200k pending events are 25 MB, and the snapshot holds intake)."""
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _key_tensors(store: _PendingEvents, order: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys at ring positions ``order`` of ``store``: uint8 ``[n, width]`` and their int32 lengths."""
    keys = np.ascontiguousarray(store.words[order]).view(np.uint8).reshape(len(order), store.width).copy()
    return torch.from_numpy(keys), torch.from_numpy(store.lengths[order].astype(np.int32))


def _hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """64-bit hash of keys (``uint64 [n, w]``); zero words add nothing, so widening keeps hashes."""
    h = lengths.astype(np.uint64) * _MIX
    for j in range(words.shape[1]):
        h ^= words[:, j] * _WORD_MULT[j]
    h ^= h >> np.uint64(31)
    h *= _MIX
    h ^= h >> np.uint64(29)
    return h


class _PendingEvents:
    """Predicted events waiting for labels: ring of arrays + id hash table (see above)."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        self.input_dim, self.output_dim = input_dim, output_dim
        self.width = 8
        self._allocate(0)
        self._table = np.full(1024, _EMPTY, np.int32)
        self._used = 0

    def _allocate(self, cap: int) -> None:
        self.features = np.zeros((cap, self.input_dim), np.float32)
        self.scores = np.zeros((cap, self.output_dim), np.float32)
        self.arrived = np.zeros(cap, np.float64)
        self.words = np.zeros((cap, self.width // 8), np.uint64)
        self.lengths = np.zeros(cap, np.uint16)
        self.head = self.span = self.live = 0

    @property
    def cap(self) -> int:
        return len(self.arrived)

    # keys -----------------------------------------------------------------------------------
    def words_of(self, keys: _Keys) -> np.ndarray:
        """The words of ``keys`` as wide as this store's; widens the store for a key that needs it."""
        if keys.wide and self.width < _MAX_WIDTH:
            self._widen()
        return keys.words[:, : self.width // 8]

    def _widen(self) -> None:
        wider = np.zeros((self.cap, _MAX_WIDTH // 8), np.uint64)
        wider[:, : self.words.shape[1]] = self.words
        self.words, self.width = wider, _MAX_WIDTH

    # lookups --------------------------------------------------------------------------------
    def find(self, keys: _Keys) -> np.ndarray:
        """Ring position of each key, -1 where it is not pending."""
        if not self.live or not len(keys.lengths):
            return np.full(len(keys.lengths), -1, np.int64)
        return find_rows(self._table, self.words, self.lengths, self.words_of(keys), keys.lengths, keys.hashes)

    def _insert(self, hashes: np.ndarray, positions: np.ndarray) -> None:
        """Table cells for keys known to be absent and distinct, stored at ring ``positions``."""
        self._used += insert_rows(self._table, self.lengths, hashes, positions)

    def _rebuild_table(self) -> None:
        """A fresh table (no stale cells) at most 55 % full, filled in one pass: sorted by home
        cell, each key takes the first cell past the previous key's, as linear probing would."""
        size = 1024
        while size * 0.55 < self.live:
            size *= 2
        order = self.order()
        homes = (_hash(self.words[order], self.lengths[order]) & np.uint64(size - 1)).astype(np.int64)
        by_home = np.argsort(homes)
        rank = np.arange(len(order))
        cells = np.maximum.accumulate(homes[by_home] - rank) + rank
        self._table = np.full(size, _EMPTY, np.int32)
        inside = cells < size
        self._table[cells[inside]] = order[by_home[inside]]
        # Keys that ran past the last cell wrap around to the first free cells, in order.
        wrapped = by_home[~inside]
        self._table[np.flatnonzero(self._table < 0)[: len(wrapped)]] = order[wrapped]
        self._used = len(order)

    # ring -------------------------------------------------------------------------------------
    def _positions(self, start: int, count: int) -> np.ndarray:
        return (self.head + start + np.arange(count)) % max(self.cap, 1)

    def order(self) -> np.ndarray:
        """Ring positions of the pending events, oldest first."""
        positions = self._positions(0, self.span)
        return positions[self.lengths[positions] != 0]

    def _relayout(self, cap: int) -> None:
        """Move the pending events, in order, to the front of arrays of ``cap`` rows."""
        order = self.order()
        old = (self.features[order], self.scores[order], self.arrived[order], self.words[order], self.lengths[order])
        self._allocate(cap)
        n = len(order)
        self.features[:n], self.scores[:n], self.arrived[:n], self.words[:n], self.lengths[:n] = old
        self.span = self.live = n
        self._rebuild_table()

    def _extend(self, cap: int) -> None:
        """Grow to ``cap`` rows keeping every row where it is; in a ring that wraps, the rows from
        ``head`` to the old end move to the new end, and their table cells follow them.

        Two slice copies and a shift of the table, where a compaction (:meth:`_relayout`) gathers
        every live row and rebuilds the table: growing a wrapped ring of 100k pending events that
        way took 9 ms, plus 2 ms for the table (mlp 256/256 catch-up, measured).
        """
        n, head = self.cap, self.head
        shift = cap - n if head + self.span > n else 0
        for name in ("features", "scores", "arrived", "words", "lengths"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[:head] = old[:head]
            new[head + shift : n + shift] = old[head:]
            setattr(self, name, new)
        if shift:
            self._table[self._table >= head] += shift
            self.head = head + shift

    def _make_room(self, count: int) -> None:
        while self.span and self.lengths[self.head] == 0:
            self._skip_dead_head()
        if self.span + count <= self.cap:
            return
        if self.live + count <= self.cap - self.cap // 8:
            self._relayout(self.cap)  # holes are worth compacting
            return
        cap = max(self.live + count, self.cap + self.cap // 8, 1024)
        # Extending keeps the holes (under an eighth of the rows here): room for the whole span.
        self._extend(max(cap, self.span + count))

    def _skip_dead_head(self) -> None:
        chunk = self._positions(0, min(self.span, 4096))
        alive = np.flatnonzero(self.lengths[chunk] != 0)
        skip = int(alive[0]) if alive.size else len(chunk)
        self.head = (self.head + skip) % self.cap
        self.span -= skip

    def append(self, keys: _Keys, features: np.ndarray, scores: np.ndarray, now: float) -> None:
        """Store new pending events (keys absent and distinct), newest last."""
        n = len(keys.lengths)
        if not n:
            return
        words, lengths, hashes = self.words_of(keys), keys.lengths, keys.hashes
        self._make_room(n)
        positions = self._positions(self.span, n)
        self.features[positions], self.scores[positions], self.arrived[positions] = features, scores, now
        self.words[positions], self.lengths[positions] = words, lengths
        self.span += n
        self.live += n
        if (self._used + n) > 0.65 * len(self._table):
            self._rebuild_table()
        else:
            self._insert(hashes, positions)

    def remove(self, positions: np.ndarray) -> None:
        """Forget the events at ``positions`` (their table cells go stale)."""
        self.lengths[positions] = 0
        self.live -= len(positions)

    def oldest(self, count: int, horizon: float = math.inf) -> np.ndarray:
        """Positions of the oldest ``count`` pending events that arrived before ``horizon``, in order,
        stopping at the first that did not (insertion order decides, as for an ordered dict).

        Reads the ring in chunks that grow 4x from 256 rows, so a call that finds nothing (most
        turns' expiry check) reads about as far as the oldest event, not the whole ring
        (400k remembered ids: 2.9 ms a call when it read them all, measured).
        """
        taken: list[np.ndarray] = []
        need, start, size = count, 0, 256
        while need and start < self.span:
            chunk = self._positions(start, min(self.span - start, size))
            size *= 4
            alive = chunk[self.lengths[chunk] != 0]
            if math.isfinite(horizon):
                young = np.flatnonzero(self.arrived[alive] >= horizon)
                if young.size:
                    taken.append(alive[: min(int(young[0]), need)])
                    break
            taken.append(alive[:need])
            need -= len(taken[-1])
            start += len(chunk)
        return np.concatenate(taken) if taken else np.zeros(0, np.int64)

    def load(
        self, words: np.ndarray, lengths: np.ndarray, features: np.ndarray, scores: np.ndarray, arrived: np.ndarray
    ) -> None:
        n = len(lengths)
        if words.shape[1] * 8 > self.width:
            self.width = words.shape[1] * 8
        self._allocate(max(n, 1024))
        self.features[:n], self.scores[:n], self.arrived[:n] = features, scores, arrived
        self.words[:n, : words.shape[1]], self.lengths[:n] = words, lengths
        self.span = self.live = n
        self._rebuild_table()
