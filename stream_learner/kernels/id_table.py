"""The join's id table, compiled: open addressing with linear probing from a key to its ring row.

The table (int32 cells, a power of two long) maps an id to its row in the join's ring of
pending events; ``-1`` is an empty cell. Ids are stored in the ring as uint64 words with a
byte length; a row whose length is 0 is dead, and a cell that points at a dead row is stale:
a lookup probes past it, an insert may take it. The probe loops are compiled with numba
(:mod:`.compiled`); :class:`stream_learner.learning.id_index.DictIdIndex` is the library
path that gives the same rows.
"""

from __future__ import annotations

import numpy as np

from stream_learner.kernels.compiled import compiled

_FIND = "int64[:](int32[:], uint64[:, :], uint16[:], uint64[:, :], uint16[:], uint64[:])"
_INSERT = "int64(int32[:], uint16[:], uint64[:], int64[:])"
_EMPTY = -1
_MIN_SIZE = 1024
_FILL_AFTER_REBUILD = 0.55
_MAX_FILL = 0.65


class ProbeIdTable:
    """An :class:`~stream_learner.learning.id_index.IdIndex` whose probes run compiled.

    Removed rows leave stale cells, which count towards the fill until a rebuild clears them;
    the table is rebuilt (:meth:`full_after` tells when) before it passes 65 % full.
    """

    def __init__(self) -> None:
        self.table = np.full(_MIN_SIZE, _EMPTY, np.int32)
        self._used = 0

    def find(
        self,
        stored_words: np.ndarray,
        stored_lengths: np.ndarray,
        words: np.ndarray,
        lengths: np.ndarray,
        hashes: np.ndarray,
    ) -> np.ndarray:
        """Ring row of each key (as wide as ``stored_words``), -1 where it is not stored."""
        rows: np.ndarray = find_rows(self.table, stored_words, stored_lengths, words, lengths, hashes)
        return rows

    def full_after(self, count: int) -> bool:
        """Whether ``count`` more keys must go in by a :meth:`rebuild` rather than an :meth:`insert`."""
        return (self._used + count) > _MAX_FILL * len(self.table)

    def insert(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """Cells for keys already written at ``rows`` of the ring, absent before and distinct."""
        self._used += int(insert_rows(self.table, stored_lengths, hashes, rows))

    def forget(self, stored_words: np.ndarray, stored_lengths: np.ndarray, rows: np.ndarray) -> None:
        """Nothing to do: the cells of rows about to die go stale."""

    def shift(self, start: int, by: int) -> None:
        """Rows from ``start`` on moved ``by`` rows further."""
        self.table[self.table >= start] += by

    def rebuild(
        self, stored_words: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
    ) -> None:
        """A fresh table (no stale cells) of the live ``rows`` with their ``hashes``, at most 55 % full,
        filled in one pass: sorted by home cell, each key takes the first cell past the previous
        key's, as linear probing would."""
        size = _MIN_SIZE
        while size * _FILL_AFTER_REBUILD < len(rows):
            size *= 2
        homes = (hashes & np.uint64(size - 1)).astype(np.int64)
        by_home = np.argsort(homes)
        rank = np.arange(len(rows))
        cells = np.maximum.accumulate(homes[by_home] - rank) + rank
        self.table = np.full(size, _EMPTY, np.int32)
        inside = cells < size
        self.table[cells[inside]] = rows[by_home[inside]]
        # Keys that ran past the last cell wrap around to the first free cells, in order.
        wrapped = by_home[~inside]
        self.table[np.flatnonzero(self.table < 0)[: len(wrapped)]] = rows[wrapped]
        self._used = len(rows)


@compiled(_FIND)
def find_rows(
    table: np.ndarray,
    stored_words: np.ndarray,
    stored_lengths: np.ndarray,
    words: np.ndarray,
    lengths: np.ndarray,
    hashes: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """The ring row of each key (``words[i]``, ``lengths[i]``, ``hashes[i]``), -1 where it is not stored.

    ``stored_words`` has as many words per row as ``words``.
    """
    mask = len(table) - 1
    width = words.shape[1]
    found = np.full(len(hashes), -1, np.int64)
    for i in range(len(hashes)):
        cell = np.int64(hashes[i] & np.uint64(mask))
        while table[cell] >= 0:
            row = table[cell]
            if stored_lengths[row] == lengths[i]:
                same = True
                for j in range(width):
                    if stored_words[row, j] != words[i, j]:
                        same = False
                        break
                if same:
                    found[i] = row
                    break
            cell = (cell + 1) & mask
    return found


@compiled(_INSERT)
def insert_rows(
    table: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray
) -> int:  # pragma: no cover - compiled
    """Point the first free cell (empty or stale) on each key's probe sequence at its row, in order.

    The keys must be absent from the table and distinct. Returns how many empty cells were taken
    (the table's fill, which decides when it is rebuilt).
    """
    mask = len(table) - 1
    taken = 0
    for i in range(len(hashes)):
        cell = np.int64(hashes[i] & np.uint64(mask))
        while table[cell] >= 0 and stored_lengths[table[cell]] != 0:
            cell = (cell + 1) & mask
        taken += table[cell] < 0
        table[cell] = rows[i]
    return taken
