"""Pending events: the join's compact store of predicted events that wait for their labels.

Per event it keeps the features, scores and arrival time in a ring of numpy arrays (insertion
order; an event that leaves makes a hole that the ring skips), its key (:mod:`.event_keys`)
as 8 or 16 raw bytes with its length, and an entry in an index from key to ring row
(:mod:`.id_index`). With the compiled index, no Python object per event: about
``4 * input_dim + 4 * output_dim + 18..26`` bytes plus table and growth slack. The same
store with no features or scores remembers the ids of joined events.
"""

from __future__ import annotations

import math

import numpy as np

from stream_learner.learning.event_keys import MAX_WIDTH, EventKeys, distinct_keys, has_repeats, hash_keys
from stream_learner.learning.id_index import make_id_index

_MIN_ROWS = 1024
_FIELDS = ("features", "scores", "arrived", "words", "lengths")


class PendingEvents:
    """Events in arrival order, found by key; each key at most once. Ring rows are "positions"."""

    def __init__(self, input_dim: int, output_dim: int, *, compiled: bool = True) -> None:
        self.input_dim, self.output_dim = input_dim, output_dim
        self.width = 8
        """Bytes of key kept per row: 8 until a key needs 16."""
        self.index = make_id_index(compiled)
        self._allocate(0)

    def _allocate(self, cap: int) -> None:
        self.features = np.zeros((cap, self.input_dim), np.float32)
        self.scores = np.zeros((cap, self.output_dim), np.float32)
        self.arrived = np.zeros(cap, np.float64)
        self.words = np.zeros((cap, self.width // 8), np.uint64)
        self.lengths = np.zeros(cap, np.uint16)
        """Byte length of each row's key; 0 marks a free row."""
        self.head = self.span = self.live = 0

    @property
    def cap(self) -> int:
        """Rows in the ring."""
        return len(self.arrived)

    def find(self, keys: EventKeys) -> np.ndarray:
        """Ring position of each key, -1 where it is not pending."""
        if not self.live or not len(keys.lengths):
            return np.full(len(keys.lengths), -1, np.int64)
        words = self._words_of(keys)  # before reading self.words: it may widen them
        return self.index.find(self.words, self.lengths, words, keys.lengths, keys.hashes)

    def _words_of(self, keys: EventKeys) -> np.ndarray:
        """The words of ``keys`` as wide as this store's; widens the store for a key that needs it."""
        if keys.wide and self.width < MAX_WIDTH:
            wider = np.zeros((self.cap, MAX_WIDTH // 8), np.uint64)
            wider[:, : self.words.shape[1]] = self.words
            self.words, self.width = wider, MAX_WIDTH
        words: np.ndarray = keys.words[:, : self.width // 8]
        return words

    def order(self) -> np.ndarray:
        """Ring positions of the pending events, oldest first."""
        positions = self._positions(0, self.span)
        live: np.ndarray = positions[self.lengths[positions] != 0]
        return live

    def _positions(self, start: int, count: int) -> np.ndarray:
        positions: np.ndarray = (self.head + start + np.arange(count)) % max(self.cap, 1)
        return positions

    def put(self, keys: EventKeys, features: np.ndarray, scores: np.ndarray, now: float) -> int:
        """Store events, newest last; an id already pending, or repeated in ``keys``, replaces its
        event, as if stored one at a time. Returns how many events were replaced."""
        n = len(keys.lengths)
        waiting = self.find(keys)
        waiting = waiting[waiting >= 0]
        replaced = np.unique(waiting) if len(waiting) else waiting
        if len(replaced):
            self.remove(replaced)
        kept = n
        if has_repeats(keys.hashes):
            _, last_from_end = np.unique(keys.hashes[::-1], return_index=True)
            rows = distinct_keys(keys, np.sort(n - 1 - last_from_end))  # the last of each repeated id
            kept = len(rows)
            keys, features, scores = keys.take(rows), features[rows], scores[rows]
        self.append(keys, features, scores, now)
        return n - kept + len(replaced)

    def append(self, keys: EventKeys, features: np.ndarray, scores: np.ndarray, now: float) -> None:
        """Store new pending events (keys absent and distinct), newest last."""
        n = len(keys.lengths)
        if not n:
            return
        words, lengths, hashes = self._words_of(keys), keys.lengths, keys.hashes
        self._make_room(n)
        positions = self._positions(self.span, n)
        self.features[positions], self.scores[positions], self.arrived[positions] = features, scores, now
        self.words[positions], self.lengths[positions] = words, lengths
        self.span += n
        self.live += n
        if self.index.full_after(n):
            self._rebuild_index()
        else:
            self.index.insert(self.words, self.lengths, hashes, positions)

    def remove(self, positions: np.ndarray) -> None:
        """Forget the events at ``positions`` (live and distinct)."""
        self.index.forget(self.words, self.lengths, positions)
        self.lengths[positions] = 0
        self.live -= len(positions)

    def oldest(self, count: int, horizon: float = math.inf) -> np.ndarray:
        """Positions of the oldest ``count`` pending events that arrived before ``horizon``, in order,
        stopping at the first that did not (insertion order decides, as for an ordered dict).

        Reads the ring in chunks that grow 4x from 256 rows, so a call that finds nothing (most
        turns' expiry check) reads about as far as the oldest event, not the whole ring.
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
        """Replace the contents with these events (distinct keys), oldest first."""
        n = len(lengths)
        if words.shape[1] * 8 > self.width:
            self.width = words.shape[1] * 8
        self._allocate(max(n, _MIN_ROWS))
        self.features[:n], self.scores[:n], self.arrived[:n] = features, scores, arrived
        self.words[:n, : words.shape[1]], self.lengths[:n] = words, lengths
        self.span = self.live = n
        self._rebuild_index()

    def _rebuild_index(self) -> None:
        order = self.order()
        self.index.rebuild(self.words, self.lengths, hash_keys(self.words[order], self.lengths[order]), order)

    def _make_room(self, count: int) -> None:
        while self.span and self.lengths[self.head] == 0:
            self._skip_dead_head()
        if self.span + count <= self.cap:
            return
        if self.live + count <= self.cap - self.cap // 8:
            self._relayout(self.cap)  # holes are worth compacting
            return
        cap = max(self.live + count, self.cap + self.cap // 8, _MIN_ROWS)
        # Extending keeps the holes (under an eighth of the rows here): room for the whole span.
        self._extend(max(cap, self.span + count))

    def _skip_dead_head(self) -> None:
        chunk = self._positions(0, min(self.span, 4096))
        alive = np.flatnonzero(self.lengths[chunk] != 0)
        skip = int(alive[0]) if alive.size else len(chunk)
        self.head = (self.head + skip) % self.cap
        self.span -= skip

    def _relayout(self, cap: int) -> None:
        """Move the pending events, in order, to the front of arrays of ``cap`` rows."""
        order = self.order()
        old = (self.features[order], self.scores[order], self.arrived[order], self.words[order], self.lengths[order])
        self._allocate(cap)
        n = len(order)
        self.features[:n], self.scores[:n], self.arrived[:n], self.words[:n], self.lengths[:n] = old
        self.span = self.live = n
        self._rebuild_index()

    def _extend(self, cap: int) -> None:
        """Grow to ``cap`` rows keeping every row where it is; in a ring that wraps, the rows from
        ``head`` to the old end move to the new end, and their index entries follow them.

        Two slice copies and a shift of the index, where a compaction (:meth:`_relayout`) gathers
        every live row and rebuilds the index.
        """
        n, head = self.cap, self.head
        shift = cap - n if head + self.span > n else 0
        for name in _FIELDS:
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[:head] = old[:head]
            new[head + shift : n + shift] = old[head:]
            setattr(self, name, new)
        if shift:
            self.index.shift(head, shift)
            self.head = head + shift
