"""The index from a stored key to its row in a ring of the join (:mod:`.pending_events`).

Two implementations give the same rows: :class:`~stream_learner.kernels.id_table.ProbeIdTable`,
a hash table whose probes run compiled (``compiled=True``), and :class:`DictIdIndex`, a Python
dict (the library path). A ring tells its index about every row it writes, frees or moves.
"""

from __future__ import annotations

import itertools
from typing import Protocol, cast

import numpy as np

from stream_learner.learning.event_keys import MAX_WIDTH


class IdIndex(Protocol):
    """Finds the ring row of a key; rows are given with the ring's ``stored_words`` and ``stored_lengths``."""

    def find(
        self,
        stored_words: np.ndarray,
        stored_lengths: np.ndarray,
        words: np.ndarray,
        lengths: np.ndarray,
        hashes: np.ndarray,
    ) -> np.ndarray:
        """Ring row (int64) of each key (as wide as ``stored_words``), -1 where it is not stored."""
        ...

    def full_after(self, count: int) -> bool:
        """Whether ``count`` more keys must go in by a :meth:`rebuild` rather than an :meth:`insert`."""
        ...

    def insert(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Index keys already written at ``rows`` of the ring, absent before and distinct."""
        ...

    def forget(self, stored_words: np.ndarray, stored_lengths: np.ndarray, rows: np.ndarray) -> None:
        """The keys at ``rows`` (live, distinct) are about to be freed."""
        ...

    def shift(self, start: int, by: int) -> None:
        """The keys at rows from ``start`` on moved ``by`` rows further."""
        ...

    def rebuild(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Index exactly the keys at ``rows`` (every live row), whose hashes are ``hashes``."""
        ...


def make_id_index(compiled: bool) -> IdIndex:
    """The compiled table where ``compiled``, else the dict."""
    if compiled:
        # Imported here: with compiled=False nothing loads or compiles numba code.
        from stream_learner.kernels.id_table import ProbeIdTable

        return ProbeIdTable()
    return DictIdIndex()


class DictIdIndex:
    """An :class:`IdIndex` that is a dict from each live key (its 16 bytes and length) to its row."""

    def __init__(self) -> None:
        self.rows: dict[bytes, int] = {}

    def find(
        self,
        stored_words: np.ndarray,
        stored_lengths: np.ndarray,
        words: np.ndarray,
        lengths: np.ndarray,
        hashes: np.ndarray,
    ) -> np.ndarray:
        """Ring row of each key, -1 where it is not stored."""
        rows = map(self.rows.get, _dict_keys(words, lengths), itertools.repeat(-1))
        return np.fromiter(rows, np.int64, len(lengths))

    def full_after(self, count: int) -> bool:
        """Never: a dict grows as it goes."""
        return False

    def insert(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Index keys already written at ``rows`` of the ring."""
        self.rows.update(zip(_dict_keys(stored_words[rows], stored_lengths[rows]), rows.tolist(), strict=True))

    def forget(self, stored_words: np.ndarray, stored_lengths: np.ndarray, rows: np.ndarray) -> None:
        """Drop the keys at ``rows``, about to be freed, where they still point at those rows (a state
        saved by an older version may hold an id twice)."""
        index = self.rows
        for key, row in zip(_dict_keys(stored_words[rows], stored_lengths[rows]), rows.tolist(), strict=True):
            if index.get(key) == row:
                del index[key]

    def shift(self, start: int, by: int) -> None:
        """Rows from ``start`` on moved ``by`` rows further."""
        self.rows = {key: row + by if row >= start else row for key, row in self.rows.items()}

    def rebuild(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Index exactly the keys at ``rows``."""
        self.rows = {}
        self.insert(stored_words, stored_lengths, hashes, rows)


def _dict_keys(words: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """Each key (uint64 words ``[n, w]``, w of 1 or 2) as 24 bytes: both words, zero-padded, and its length.

    A key that fits in 8 bytes has a zero second word, so it reads the same from a narrow store and a wide one.
    """
    packed = np.zeros((len(lengths), MAX_WIDTH // 8 + 1), np.uint64)
    packed[:, : words.shape[1]] = words
    packed[:, -1] = lengths
    return cast(list[bytes], packed.view(np.dtype((np.void, packed.shape[1] * 8))).ravel().tolist())
