"""Feature rows (lists read from JSON) to the float32 matrix the model takes.

A feature is the float32 nearest to the float64 its JSON number reads as (orjson reads an
integer past 2**53 to the nearest float64, as Python's ``float()`` does). A row that holds
anything but numbers (``true`` and ``false`` included, which numpy would read as 1 and 0),
or a number that is no finite float32, is named with its reason instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stream_learner.intake.checks import Problem

NON_FINITE: Problem = ("non_finite_features", "'features' holds a value that is not a finite float32")
NOT_NUMBERS: Problem = ("bad_features", "'features' must hold only numbers")


def feature_matrix(rows: list[list[Any]], input_dim: int) -> tuple[np.ndarray, dict[int, Problem]]:
    """float32 ``[len(rows), input_dim]`` of rows of ``input_dim`` values, and the bad rows by index.

    The caller drops the bad rows. One numpy pass infers the type of the whole batch; a
    string, ``null``, object or nested array anywhere makes it no number array, and the rows
    are then read one by one to name the bad ones.
    """
    if not rows:
        return np.zeros((0, input_dim), np.float32), {}
    try:
        inferred = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return _row_by_row(rows, input_dim)
    if inferred.dtype.kind not in "fiu" or inferred.shape != (len(rows), input_dim):
        return _row_by_row(rows, input_dim)
    with np.errstate(over="ignore"):
        matrix = inferred.astype(np.float64, copy=False).astype(np.float32)
    if _holds_booleans(rows, matrix):
        return _row_by_row(rows, input_dim)
    finite = np.isfinite(matrix).all(axis=1)
    if finite.all():
        return matrix, {}
    return matrix, dict.fromkeys(np.flatnonzero(~finite).tolist(), NON_FINITE)


def _holds_booleans(rows: list[list[Any]], matrix: np.ndarray) -> bool:
    # numpy reads true and false as 1 and 0, so only a row holding a 0 or a 1 can hold one.
    maybe = np.flatnonzero(((matrix == 0) | (matrix == 1)).any(axis=1)).tolist()
    return any(bool in set(map(type, rows[i])) for i in maybe)


def _row_by_row(rows: list[list[Any]], input_dim: int) -> tuple[np.ndarray, dict[int, Problem]]:
    matrix = np.zeros((len(rows), input_dim), np.float32)
    bad: dict[int, Problem] = {}
    for i, row in enumerate(rows):
        if any(type(v) is not int and type(v) is not float for v in row):
            bad[i] = NOT_NUMBERS
            continue
        try:
            with np.errstate(over="ignore"):
                matrix[i] = np.asarray(row, dtype=np.float32)
        except (OverflowError, ValueError):
            bad[i] = NON_FINITE
            continue
        if not np.isfinite(matrix[i]).all():
            bad[i] = NON_FINITE
    return matrix, bad
