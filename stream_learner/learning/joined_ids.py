"""Joined ids: the keys of events that met their label, so that a later label for one is a duplicate.

The newest ``max_count`` are remembered, each until ``ttl_s`` after it joined; a key costs
the same whatever the length of its id (:mod:`.event_keys`).
"""

from __future__ import annotations

import numpy as np
import torch

from stream_learner.learning.event_keys import EventKeys, distinct_keys, has_repeats, key_tensors, keys_from_state
from stream_learner.learning.pending_events import PendingEvents


class JoinedIds:
    """Keys of joined events with their join times, oldest first, each key once."""

    def __init__(self, max_count: int, *, compiled: bool = True) -> None:
        self.max_count, self.compiled = max_count, compiled
        self._keys = PendingEvents(0, 0, compiled=compiled)

    def __len__(self) -> int:
        return self._keys.live

    def contains(self, keys: EventKeys) -> np.ndarray:
        """Whether each key is remembered as joined (bool ``[n]``)."""
        found: np.ndarray = self._keys.find(keys) >= 0
        return found

    def remember(self, keys: EventKeys, now: float) -> None:
        """Remember ``keys`` as joined at ``now`` (those already remembered keep their time),
        forgetting the oldest beyond ``max_count``."""
        if not len(keys.lengths):
            return
        store = self._keys
        new = keys.take(np.flatnonzero(store.find(keys) < 0))
        if has_repeats(new.hashes):
            _, first = np.unique(new.hashes, return_index=True)
            new = new.take(distinct_keys(new, np.sort(first)))
        nothing = np.zeros((len(new.lengths), 0), np.float32)
        store.append(new, nothing, nothing, now)
        over = store.live - self.max_count
        if over > 0:
            store.remove(store.oldest(over))

    def forget_before(self, horizon: float) -> None:
        """Forget the keys that joined before ``horizon``."""
        forgotten = self._keys.oldest(self._keys.live, horizon)
        if len(forgotten):
            self._keys.remove(forgotten)

    def state_dict(self) -> dict[str, object]:
        """``joined_keys`` (uint8 ``[n, width]``), ``joined_key_lengths`` and ``joined_at``, oldest first."""
        store = self._keys
        order = store.order()
        keys, lengths = key_tensors(store.words[order], store.lengths[order])
        return {"joined_keys": keys, "joined_key_lengths": lengths, "joined_at": torch.from_numpy(store.arrived[order])}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the contents with a :meth:`state_dict`'s (or with ``joined_ids`` strings and ``joined_at``)."""
        words, lengths = keys_from_state(state, "joined")
        nothing = np.zeros((len(lengths), 0), np.float32)
        joined_at = state["joined_at"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        self._keys = PendingEvents(0, 0, compiled=self.compiled)
        self._keys.load(words, lengths, nothing, nothing, joined_at)
