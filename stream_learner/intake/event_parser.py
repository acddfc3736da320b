"""The common event, parsed straight into arrays by a compiled scanner.

An event value is the UTF-8 JSON object ``{"id": "...", "features": [...], "ts": ...}``.
:func:`parse_events` reads the values of a batch, concatenated, in one compiled pass and
writes each one's features into a float32 row, its ``ts`` into a float64 and the byte range
of its id: no Python object per number, where ``orjson.loads`` made a dict, a list and 32
floats per event and numpy then read them back.

It takes the plain case only and reports every other record as not parsed, for the caller
to decode the general way (which names what is wrong, if anything is): keys other than
``id``, ``features`` and ``ts`` or a key twice; an id with an escape, a control or non-ASCII
byte, or empty; a feature count other than ``input_dim``; an integer past 2**53; a number
that is not finite; ``true``, ``false``, a string or anything nested where a number belongs;
trailing bytes.

Numbers come out as orjson reads them, so a parsed row equals the general decoder's. One
with at most 18 significant digits, a mantissa up to 2**53 and a decimal exponent within
±22 is computed here (Clinger's fast path: an exact mantissa times or over an exact power of
ten rounds once, correctly). Any other (a ``time.time()`` with 17 digits, say) is copied out
and read by one ``orjson.loads`` per batch, up to ``_TO_ORJSON_PER_EVENT`` per event.
Features are then rounded to float32 as numpy rounds a float64 array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numba
import numpy as np
import orjson

from stream_learner.kernels.compiled import compiled

_BYTES = numba.types.Array(numba.types.uint8, 1, "C", readonly=True)
_SIGNATURE = numba.types.void(
    _BYTES,
    numba.int64[:],
    numba.int64[:],
    numba.int64,
    numba.uint8[:],
    numba.float32[:, :],
    numba.float64[:],
    numba.int64[:],
    numba.int64[:],
    numba.int64[:, :],
    numba.uint8[:],
)
_MAX_EXACT = 2**53
_MAX_DIGITS = 18
"""Significant digits read into the int64 mantissa (19 could overflow it)."""

_SPACE, _TAB, _LF, _CR = 0x20, 0x09, 0x0A, 0x0D
_QUOTE, _BACKSLASH, _COLON, _COMMA = 0x22, 0x5C, 0x3A, 0x2C
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = 0x7B, 0x7D, 0x5B, 0x5D
_MINUS, _PLUS, _DOT, _ZERO, _NINE, _E, _LOWER_E = 0x2D, 0x2B, 0x2E, 0x30, 0x39, 0x45, 0x65
_KEY_ID, _KEY_FEATURES, _KEY_TS, _KEY_OTHER = 1, 2, 4, 0
_INVALID, _EXACT, _TO_ORJSON = 0, 1, 2
_TS_COLUMN = -1
_TO_ORJSON_PER_EVENT = 2
"""Numbers per event, on average over a batch, that the scanner leaves to orjson; past that the
rest of the batch is not parsed (left to the general decoder)."""


@compiled()
def _skip_space(buf: np.ndarray, p: int, end: int) -> int:  # pragma: no cover - compiled
    while p < end and (buf[p] == _SPACE or buf[p] == _LF or buf[p] == _CR or buf[p] == _TAB):
        p += 1
    return p


@compiled()
def _number(
    buf: np.ndarray, p: int, end: int, powers: np.ndarray
) -> tuple[float, int, int]:  # pragma: no cover - compiled
    """``(value, next position, status)`` of the JSON number at ``p``: status ``_EXACT`` (the value
    is ``float(text)``), ``_TO_ORJSON`` (valid, a fraction or exponent beyond the fast path) or
    ``_INVALID`` (not a JSON number, or an integer beyond 2**53)."""
    negative = p < end and buf[p] == _MINUS
    p += negative
    if p >= end or buf[p] < _ZERO or buf[p] > _NINE:
        return 0.0, p, _INVALID
    if buf[p] == _ZERO and p + 1 < end and _ZERO <= buf[p + 1] <= _NINE:
        return 0.0, p, _INVALID  # a leading zero is not JSON
    mantissa, digits, exponent, integer = 0, 0, 0, True
    while p < end and _ZERO <= buf[p] <= _NINE:
        if digits < _MAX_DIGITS:
            mantissa = mantissa * 10 + (buf[p] - _ZERO)
        else:
            exponent += 1  # not read: the value goes to orjson
        digits += digits > 0 or buf[p] != _ZERO
        p += 1
    if p < end and buf[p] == _DOT:
        integer = False
        p += 1
        start = p
        while p < end and _ZERO <= buf[p] <= _NINE:
            if digits < _MAX_DIGITS:
                mantissa = mantissa * 10 + (buf[p] - _ZERO)
                exponent -= 1
            digits += digits > 0 or buf[p] != _ZERO
            p += 1
        if p == start:
            return 0.0, p, _INVALID
    if p < end and (buf[p] == _E or buf[p] == _LOWER_E):
        integer = False
        p += 1
        sign = 1
        if p < end and (buf[p] == _MINUS or buf[p] == _PLUS):
            sign = -1 if buf[p] == _MINUS else 1
            p += 1
        start, written = p, 0
        while p < end and _ZERO <= buf[p] <= _NINE:
            written = written * 10 + (buf[p] - _ZERO) if written < 100_000 else written
            p += 1
        if p == start:
            return 0.0, p, _INVALID
        exponent += sign * written
    if mantissa == 0 and digits == 0:
        return (0.0 if integer or not negative else -0.0), p, _EXACT
    if digits > _MAX_DIGITS or mantissa > _MAX_EXACT or exponent < -22 or exponent > 22:
        return 0.0, p, _INVALID if integer else _TO_ORJSON
    value = mantissa * powers[exponent] if exponent >= 0 else mantissa / powers[-exponent]
    return (-value if negative else value), p, _EXACT


@compiled()
def _key(buf: np.ndarray, p: int, end: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """``(which key, position after its closing quote)`` of the key string whose opening quote is at ``p``."""
    start = p + 1
    q = start
    while q < end and buf[q] != _QUOTE:
        if buf[q] == _BACKSLASH:
            return _KEY_OTHER, end
        q += 1
    if q >= end:
        return _KEY_OTHER, end
    n = q - start
    if n == 2 and buf[start] == 0x69 and buf[start + 1] == 0x64:  # id
        return _KEY_ID, q + 1
    if n == 2 and buf[start] == 0x74 and buf[start + 1] == 0x73:  # ts
        return _KEY_TS, q + 1
    if n == 8:
        word = (0x66, 0x65, 0x61, 0x74, 0x75, 0x72, 0x65, 0x73)  # features
        for j in range(8):
            if buf[start + j] != word[j]:
                return _KEY_OTHER, q + 1
        return _KEY_FEATURES, q + 1
    return _KEY_OTHER, q + 1


@compiled()
def _leave_to_orjson(
    buf: np.ndarray, start: int, end: int, row: int, column: int, notes: np.ndarray, texts: np.ndarray
) -> bool:  # pragma: no cover - compiled
    """Note the number ``buf[start:end]`` (of ``row``, feature ``column`` or ``_TS_COLUMN``) for orjson to
    read, and copy its text into ``texts`` followed by a comma. ``notes[0]`` holds the count of notes
    (in rows 1 on) and of bytes written. False when ``notes`` is full."""
    count, written = notes[0, 0], notes[0, 1]
    if count + 1 >= len(notes):
        return False
    notes[count + 1, 0], notes[count + 1, 1] = row, column
    for k in range(start, end):
        texts[written] = buf[k]
        written += 1
    texts[written] = _COMMA
    notes[0, 0], notes[0, 1] = count + 1, written + 1
    return True


@compiled()
def _event(
    buf: np.ndarray,
    p: int,
    end: int,
    dim: int,
    row: np.ndarray,
    powers: np.ndarray,
    notes: np.ndarray,
    texts: np.ndarray,
    row_index: int,
) -> tuple[bool, float, int, int]:  # pragma: no cover - compiled
    """``(ok, ts, id start, id end)`` of the event value ``buf[p:end]``; its features go into ``row``,
    except those left to orjson (see :func:`_leave_to_orjson`)."""
    ts, id_start, id_end, seen = np.nan, 0, 0, 0
    p = _skip_space(buf, p, end)
    if p >= end or buf[p] != _OPEN_OBJECT:
        return False, ts, 0, 0
    p = _skip_space(buf, p + 1, end)
    while True:
        if p >= end or buf[p] != _QUOTE:
            return False, ts, 0, 0
        key, p = _key(buf, p, end)
        if key == _KEY_OTHER or seen & key:
            return False, ts, 0, 0
        seen |= key
        p = _skip_space(buf, p, end)
        if p >= end or buf[p] != _COLON:
            return False, ts, 0, 0
        p = _skip_space(buf, p + 1, end)
        if p >= end:
            return False, ts, 0, 0
        if key == _KEY_ID:
            if buf[p] != _QUOTE:
                return False, ts, 0, 0
            id_start = p + 1
            p += 1
            while p < end and buf[p] != _QUOTE:
                if buf[p] == _BACKSLASH or buf[p] < 0x20 or buf[p] > 0x7E:
                    return False, ts, 0, 0
                p += 1
            if p >= end or p == id_start:
                return False, ts, 0, 0
            id_end = p
            p += 1
        elif key == _KEY_TS:
            if buf[p] == 0x6E:  # null
                if p + 4 > end or buf[p + 1] != 0x75 or buf[p + 2] != 0x6C or buf[p + 3] != 0x6C:
                    return False, ts, 0, 0
                p += 4
            else:
                start = p
                ts, p, status = _number(buf, p, end, powers)
                if (
                    status == _INVALID
                    or status == _TO_ORJSON
                    and not _leave_to_orjson(buf, start, p, row_index, _TS_COLUMN, notes, texts)
                ):
                    return False, ts, 0, 0
        else:
            if buf[p] != _OPEN_ARRAY:
                return False, ts, 0, 0
            p += 1
            for j in range(dim):
                p = _skip_space(buf, p, end)
                start = p
                value, p, status = _number(buf, p, end, powers)
                if (
                    status == _INVALID
                    or status == _TO_ORJSON
                    and not _leave_to_orjson(buf, start, p, row_index, j, notes, texts)
                ):
                    return False, ts, 0, 0
                row[j] = value
                p = _skip_space(buf, p, end)
                if p >= end or buf[p] != (_COMMA if j + 1 < dim else _CLOSE_ARRAY):
                    return False, ts, 0, 0
                p += 1
        p = _skip_space(buf, p, end)
        if p >= end or buf[p] != _COMMA:
            break
        p = _skip_space(buf, p + 1, end)
    if p >= end or buf[p] != _CLOSE_OBJECT or (seen & (_KEY_ID | _KEY_FEATURES)) != (_KEY_ID | _KEY_FEATURES):
        return False, ts, 0, 0
    if _skip_space(buf, p + 1, end) != end:
        return False, ts, 0, 0
    return True, ts, id_start, id_end


@compiled(_SIGNATURE)
def _parse(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    dim: int,
    parsed: np.ndarray,
    features: np.ndarray,
    ts: np.ndarray,
    id_starts: np.ndarray,
    id_ends: np.ndarray,
    notes: np.ndarray,
    texts: np.ndarray,
) -> None:  # pragma: no cover - compiled
    powers = np.empty(23)
    powers[0] = 1.0
    for k in range(1, 23):
        powers[k] = powers[k - 1] * 10.0  # exact: every power of ten up to 1e22 is a float64
    for i in range(len(starts)):
        ok, t, a, b = _event(buf, starts[i], ends[i], dim, features[i], powers, notes, texts, i)
        parsed[i] = ok
        ts[i] = t
        id_starts[i] = a
        id_ends[i] = b


class ParsedEvents(NamedTuple):
    """What :func:`parse_events` read; rows where ``parsed`` is false hold nothing."""

    parsed: np.ndarray
    """bool ``[n]``: the value was the plain case and is fully read."""
    features: np.ndarray
    """float32 ``[n, input_dim]``."""
    ts: np.ndarray
    """float64 ``[n]``: NaN where the event had no ``ts`` (or ``null``)."""
    ids: list[str]


def parse_events(values: Sequence[bytes | None], input_dim: int) -> ParsedEvents:
    """Parse event values (see the module docstring for which ones) in one compiled pass."""
    n = len(values)
    if input_dim < 1:
        return ParsedEvents(np.zeros(n, bool), np.zeros((n, 0), np.float32), np.full(n, np.nan), [""] * n)
    chunks = [v or b"" for v in values]
    joined = b"".join(chunks)
    lengths = np.fromiter(map(len, chunks), np.int64, n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    parsed = np.zeros(n, np.uint8)
    features = np.empty((n, input_dim), np.float32)
    ts = np.empty(n, np.float64)
    id_starts, id_ends = np.zeros(n, np.int64), np.zeros(n, np.int64)
    notes = np.zeros((1 + _TO_ORJSON_PER_EVENT * n, 2), np.int64)
    texts = np.empty(len(joined) + 1, np.uint8)
    _parse(
        np.frombuffer(joined, np.uint8), starts, ends, input_dim, parsed, features, ts, id_starts, id_ends, notes, texts
    )
    parsed = parsed.view(bool)
    count, written = notes[0]
    if count:
        _read_with_orjson(notes[1 : 1 + count], texts[: written - 1].tobytes(), parsed, features, ts)
    text = joined.decode("latin-1")  # a parsed id is ASCII: its byte range is its character range
    ids = [text[a:b] for a, b in zip(id_starts.tolist(), id_ends.tolist())]
    return ParsedEvents(parsed, features, ts, ids)


def _read_with_orjson(
    notes: np.ndarray, texts: bytes, parsed: np.ndarray, features: np.ndarray, ts: np.ndarray
) -> None:
    """Fill in the numbers the scanner left to orjson (the parser of the general decoder, so the
    values are the same); a row where one is not finite is not parsed (the general decoder names it)."""
    rows, columns = notes[:, 0], notes[:, 1]
    try:
        values = np.array(orjson.loads(b"[" + texts + b"]"), np.float64)
    except orjson.JSONDecodeError:
        parsed[rows] = False
        return
    in_ts = columns == _TS_COLUMN
    ts[rows[in_ts]] = values[in_ts]
    with np.errstate(over="ignore"):
        features[rows[~in_ts], columns[~in_ts]] = values[~in_ts]
    touched = np.unique(rows)
    finite = np.isfinite(features[touched]).all(axis=1) & ~np.isinf(ts[touched])
    parsed[touched[~finite]] = False
