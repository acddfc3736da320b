"""Event records to one :class:`~stream_learner.records.EventBatch`, bad ones to ``Rejected``.

An event value is the UTF-8 JSON object ``{"id": "...", "features": [...], "ts": ...}``
(docs/contract.md); keys beyond these are ignored. Values are read by ``orjson``,
features stacked by numpy. A batch whose every record is a plain event (an object with a
non-empty string id, a list of ``input_dim`` features and a ``ts`` that is absent, ``null``
or a number) is checked as a whole; any other batch record by record, which names what is
wrong. Both give the same batch and the same rejections for the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from stream_learner.intake.checks import (
    Problem,
    all_ids,
    check_id,
    check_object,
    collector_paused,
    is_finite_number,
    load_all,
    load_json,
)
from stream_learner.intake.features import feature_matrix
from stream_learner.records import EventBatch, RawRecord, ReadRecords, Rejected, as_read_records

_TS_TYPES = {type(None), int, float}
_ids, _features = itemgetter("id"), itemgetter("features")


@collector_paused()
def decode_events(
    records: ReadRecords | Sequence[RawRecord], input_dim: int, now: float
) -> tuple[EventBatch, list[Rejected]]:
    """Decode event records (of any partitions) into one batch; bad ones are rejected with a reason, never raised.

    ``records``: columns a client read (:class:`ReadRecords`), or records with the attributes of
    :class:`RawRecord` (aiokafka ``ConsumerRecord`` objects as well). A rejected one is copied
    into a ``RawRecord``. Good records keep their order; ``now`` is every event's ``received_at``.
    """
    read = as_read_records(records)
    values = read.values()
    objects = load_all(values)
    plain = None if objects is None else _plain_fields(objects, input_dim)
    if plain is None:
        return _decode_one_by_one(read, values, objects, input_dim, now)
    ids, rows, ts = plain
    return _assemble(read, None, ids, rows, ts, [], input_dim, now)


def _plain_fields(objects: list[Any], input_dim: int) -> tuple[list[str], list[list[Any]], np.ndarray] | None:
    """The ids, feature rows and float64 ts of a batch of plain events, or ``None`` if one is not."""
    try:
        ids, rows = list(map(_ids, objects)), list(map(_features, objects))
    except (KeyError, TypeError):  # a missing key, or a value that is no object
        return None
    ts = [o.get("ts") for o in objects]
    if not (
        all_ids(ids)
        and set(map(type, rows)) == {list}
        and set(map(len, rows)) == {input_dim}
        and set(map(type, ts)) <= _TS_TYPES
    ):
        return None
    try:
        times = np.array(ts, dtype=np.float64)  # null -> NaN
    except OverflowError:
        return None
    return (ids, rows, times) if not np.isinf(times).any() else None


def _decode_one_by_one(
    read: ReadRecords, values: list[bytes | None], objects: list[Any] | None, input_dim: int, now: float
) -> tuple[EventBatch, list[Rejected]]:
    """Each record checked on its own (``objects``: the values read already, if every one is JSON)."""
    keep: list[int] = []
    ids: list[str] = []
    rows: list[list[Any]] = []
    ts: list[Any] = []
    rejected: list[Rejected] = []
    for i, value in enumerate(values):
        obj, problem = (objects[i], None) if objects is not None else load_json(value)
        problem = problem or _check_event(obj, input_dim)
        if problem is not None:
            rejected.append(Rejected(read.raw(i), *problem))
            continue
        keep.append(i)
        ids.append(obj["id"])
        rows.append(obj["features"])
        ts.append(obj.get("ts"))
    kept = np.array(keep, np.int64)
    return _assemble(read, kept, ids, rows, np.array(ts, dtype=np.float64), rejected, input_dim, now)


def _check_event(obj: Any, input_dim: int) -> Problem | None:
    problem = check_object(obj) or check_id(obj)
    if problem is not None:
        return problem
    features = obj.get("features")
    if features is None:
        return "missing_features", "the object has no 'features'"
    if not isinstance(features, list):
        return "bad_features", "'features' must be an array of numbers"
    if len(features) != input_dim:
        return "wrong_feature_length", f"'features' has {len(features)} values, expected {input_dim}"
    ts = obj.get("ts")
    if ts is not None and not is_finite_number(ts):
        return "bad_ts", "'ts' must be a finite number of epoch seconds"
    return None


def _assemble(
    read: ReadRecords,
    kept: np.ndarray | None,
    ids: list[str],
    rows: list[list[Any]],
    ts: np.ndarray,
    rejected: list[Rejected],
    input_dim: int,
    now: float,
) -> tuple[EventBatch, list[Rejected]]:
    """The batch of the records that passed the object checks (rows ``kept`` of ``read``, None: all);
    rows with bad features are rejected too."""
    features, bad_rows = feature_matrix(rows, input_dim)
    partitions = read.partitions() if kept is None else read.partitions()[kept]
    if bad_rows:
        rows_read = np.arange(len(ids)) if kept is None else kept
        rejected.extend(Rejected(read.raw(int(rows_read[i])), *problem) for i, problem in bad_rows.items())
        good = np.ones(len(ids), bool)
        good[list(bad_rows)] = False
        ids = [ids[i] for i in np.flatnonzero(good).tolist()]
        features, ts, partitions = features[good], ts[good], partitions[good]
    return EventBatch(ids, features, ts, np.full(len(ids), now), partitions), rejected
