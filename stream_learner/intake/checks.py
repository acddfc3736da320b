"""What every record type's decoder shares: a value read as JSON, and the checks on it.

A check returns ``None`` when the record passes it, else the ``(reason, detail)`` of its
:class:`~stream_learner.records.Rejected`.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson

Problem = tuple[str, str]
"""``(reason, detail)`` of a rejected record."""


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, and back on after it if it was on.

    Used as a decorator, the call's locals are freed before the collector is back on.
    """
    # A decoder makes a dict and a list per record, all alive until its batch is built and all freed
    # by reference counting when it returns: collections meanwhile would only walk them, and every few
    # batches (a full collection, as they survive) walk the whole heap.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_all(values: Sequence[bytes | None]) -> list[Any] | None:
    """Every value read by ``orjson``, or ``None`` when one is no JSON (or no value at all)."""
    try:
        return list(map(orjson.loads, values))  # type: ignore[arg-type]  # a None raises JSONDecodeError
    except orjson.JSONDecodeError:
        return None


def load_json(value: bytes | None) -> tuple[Any, Problem | None]:
    """``(the JSON value, None)``, or ``(None, problem)`` for a tombstone or a value that is no JSON."""
    if value is None:
        return None, ("empty_value", "the record has no value (tombstone)")
    try:
        return orjson.loads(value), None
    except orjson.JSONDecodeError as exc:
        return None, ("invalid_json", f"value is not JSON: {exc}")


def check_object(obj: Any) -> Problem | None:
    """The JSON value is an object."""
    if not isinstance(obj, dict):
        return "not_an_object", f"value is a JSON {type(obj).__name__}, not an object"
    return None


def check_id(obj: dict[str, Any]) -> Problem | None:
    """The object has an ``id`` that is a non-empty string."""
    if "id" not in obj:
        return "missing_id", "the object has no 'id'"
    if not isinstance(obj["id"], str) or not obj["id"]:
        return "bad_id", "'id' must be a non-empty string"
    return None


def is_finite_number(x: Any) -> bool:
    """Whether ``x`` is an int or float (not a bool) that is a finite float64."""
    if type(x) is not int and type(x) is not float:
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float64
        return False


def all_ids(ids: list[Any]) -> bool:
    """Whether ``ids`` is a non-empty list of non-empty strings (the batch test of :func:`check_id`)."""
    return set(map(type, ids)) == {str} and all(ids)
