"""The probe loops of the join's id table, compiled: open addressing with linear probing.

The table (int32 cells, a power of two long) maps an id to its row in the join's ring of
pending events; ``-1`` is an empty cell. Ids are stored in the ring as uint64 words with a
byte length; a row whose length is 0 is dead, and a cell that points at a dead row is stale:
a lookup probes past it, an insert may take it.

numba compiles both loops once per process, or loads them from its cache (beside this file,
in ``NUMBA_CACHE_DIR``, or in the user's cache directory; where none is writable they compile
at every start, about half a second). One key costs a few nanoseconds here; the vectorized
numpy probing these loops replaced spent 1.5 µs per id on its ~40 array calls per batch.
"""

from __future__ import annotations

from typing import Any, Callable

import numba
import numpy as np

_FIND = "int64[:](int32[:], uint64[:, :], uint16[:], uint64[:, :], uint16[:], uint64[:])"
_INSERT = "int64(int32[:], uint16[:], uint64[:], int64[:])"


def _compiled(signature: str) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` for ``signature``, compiled now, cached on disk where numba finds a writable place."""

    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(signature, cache=True)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(signature)(function)

    return compile_


@_compiled(_FIND)
def find_rows(
    table: np.ndarray, stored_words: np.ndarray, stored_lengths: np.ndarray, words: np.ndarray, lengths: np.ndarray, hashes: np.ndarray
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


@_compiled(_INSERT)
def insert_rows(table: np.ndarray, stored_lengths: np.ndarray, hashes: np.ndarray, rows: np.ndarray) -> int:  # pragma: no cover - compiled
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
