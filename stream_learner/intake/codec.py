"""Bytes to records and back, following the topic contract in the README.

Decoders never raise on bad input: a record that cannot be used comes back as a
:class:`~stream_learner.records.Rejected` with a reason, and every good record
around it is decoded as usual.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from stream_learner.config import FLOAT32_LIMIT
from stream_learner.intake.event_parser import parse_events
from stream_learner.records import EventBatch, LabelBatch, Predictions, RawRecord, Rejected

_NUMBER = (int, float)
_EXACT_INT = 2**53
"""Integers up to this size are exact as float64: an int ``ts`` within it takes the fast path."""


def decode_events(records: Sequence[RawRecord], input_dim: int, now: float) -> tuple[EventBatch, list[Rejected]]:
    """Decode event records (of any partitions) into one batch; bad ones are rejected with a reason.

    ``records`` may be aiokafka ``ConsumerRecord`` objects as well (anything with the
    attributes of :class:`RawRecord`); a rejected one is copied into a ``RawRecord``.
    A batch of plain events (:mod:`.event_parser`) is read by the compiled parser; any other
    batch record by record, with ``orjson``. Both give the same batch for the same records.
    """
    parsed = parse_events([r.value for r in records], input_dim)
    if parsed.parsed.all():
        partitions = np.fromiter((r.partition for r in records), np.int64, len(records))
        batch = EventBatch(parsed.ids, parsed.features, parsed.ts, np.full(len(records), now), partitions)
        return batch, []
    return _decode_events_one_by_one(records, input_dim, now)


def _decode_events_one_by_one(
    records: Sequence[RawRecord], input_dim: int, now: float
) -> tuple[EventBatch, list[Rejected]]:
    ids: list[str] = []
    rows: list[list[Any]] = []
    ts: list[float] = []
    partitions: list[int] = []
    keep: list[RawRecord] = []
    rejected: list[Rejected] = []
    loads, nan = orjson.loads, math.nan
    for record in records:
        # The common case inline: a JSON object with a non-empty string id, a list of the
        # right length and no ts or a float/int one. Anything else takes the checks below,
        # which name the reason.
        value = record.value
        try:
            obj = loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            event_id, features, t = obj.get("id"), obj.get("features"), obj.get("ts")
            if (
                type(event_id) is str
                and event_id
                and type(features) is list
                and len(features) == input_dim
                and (
                    t is None or type(t) is float and t - t == 0.0 or type(t) is int and -_EXACT_INT <= t <= _EXACT_INT
                )
            ):
                ids.append(event_id)
                rows.append(features)
                ts.append(nan if t is None else t)
                partitions.append(record.partition)
                keep.append(record)
                continue
        obj, problem = _load_object(record)
        if problem is None:
            problem = _check_event(obj, input_dim)
        if problem is not None:
            rejected.append(Rejected(RawRecord.of(record), *problem))
            continue
        ids.append(obj["id"])
        rows.append(obj["features"])
        ts.append(_event_time(obj.get("ts")))
        partitions.append(record.partition)
        keep.append(record)
    features, bad_rows = _feature_matrix(rows, input_dim, keep)
    if bad_rows:
        rejected.extend(Rejected(RawRecord.of(keep[i]), reason, detail) for i, (reason, detail) in bad_rows.items())
        good = [i for i in range(len(ids)) if i not in bad_rows]
        ids, features, ts, partitions = (
            [ids[i] for i in good],
            features[good],
            [ts[i] for i in good],
            [partitions[i] for i in good],
        )
    batch = EventBatch(
        ids, features, np.asarray(ts, dtype=np.float64), np.full(len(ids), now), np.asarray(partitions, dtype=np.int64)
    )
    return batch, rejected


def decode_labels(records: Sequence[RawRecord], task: str, num_classes: int) -> tuple[LabelBatch, list[Rejected]]:
    """Decode label records; ids and values are checked against the task (``records`` as for :func:`decode_events`).

    A class label is an integer in ``[0, num_classes)``; a regression label a number that is a
    finite float32, the type the model trains in (``bad_label`` otherwise).
    """
    ids: list[str] = []
    labels: list[float] = []
    partitions: list[int] = []
    offsets: list[int] = []
    rejected: list[Rejected] = []
    loads = orjson.loads
    classification = task == "classification"
    for record in records:
        # The common case inline: a non-empty string id and an int class in range (or, for
        # regression, a float or int); anything else takes the checks that name the reason.
        value = record.value
        try:
            obj = loads(value) if value is not None else None
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            event_id, label = obj.get("id"), obj.get("label")
            if (
                type(event_id) is str
                and event_id
                and (
                    (type(label) is int and 0 <= label < num_classes)
                    if classification
                    else (type(label) is float and -FLOAT32_LIMIT < label < FLOAT32_LIMIT)
                )
            ):
                ids.append(event_id)
                labels.append(float(label))
                partitions.append(record.partition)
                offsets.append(record.offset)
                continue
        obj, problem = _load_object(record)
        if problem is None:
            problem = _check_id(obj) or _check_label(obj, task, num_classes)
        if problem is not None:
            rejected.append(Rejected(RawRecord.of(record), *problem))
            continue
        ids.append(obj["id"])
        labels.append(float(obj["label"]))
        partitions.append(record.partition)
        offsets.append(record.offset)
    batch = LabelBatch(
        ids,
        np.asarray(labels, dtype=np.float64),
        np.asarray(offsets, dtype=np.int64),
        np.asarray(partitions, dtype=np.int64),
    )
    return batch, rejected


def encode_predictions(predictions: Predictions, task: str) -> list[bytes]:
    """One JSON value per event: id, prediction, scores (classification), model_version, ts."""
    events = predictions.events
    version = predictions.model_version
    has_ts = ~np.isnan(events.ts)
    ts = events.ts.tolist()
    if task == "classification":
        classes = predictions.scores.argmax(axis=1).tolist()
        scores = np.round(predictions.scores.astype(np.float64), 6).tolist()
        out = [
            {"id": i, "prediction": c, "scores": s, "model_version": version}
            for i, c, s in zip(events.ids, classes, scores)
        ]
    else:
        values = predictions.scores[:, 0].astype(np.float64).tolist()
        out = [{"id": i, "prediction": v, "model_version": version} for i, v in zip(events.ids, values)]
    for row, given, t in zip(out, has_ts.tolist(), ts):
        if given:
            row["ts"] = t
    return [orjson.dumps(row) for row in out]


def _load_object(record: RawRecord) -> tuple[dict[str, Any], None] | tuple[None, tuple[str, str]]:
    if record.value is None:
        return None, ("empty_value", "the record has no value (tombstone)")
    try:
        obj = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        return None, ("invalid_json", f"value is not JSON: {exc}")
    if not isinstance(obj, dict):
        return None, ("not_an_object", f"value is a JSON {type(obj).__name__}, not an object")
    return obj, None


def _check_id(obj: dict[str, Any]) -> tuple[str, str] | None:
    if "id" not in obj:
        return "missing_id", "the object has no 'id'"
    if not isinstance(obj["id"], str) or not obj["id"]:
        return "bad_id", "'id' must be a non-empty string"
    return None


def _check_event(obj: dict[str, Any], input_dim: int) -> tuple[str, str] | None:
    problem = _check_id(obj)
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
    if ts is not None and (not isinstance(ts, _NUMBER) or isinstance(ts, bool) or not _finite(ts)):
        return "bad_ts", "'ts' must be a finite number of epoch seconds"
    return None


def _check_label(obj: dict[str, Any], task: str, num_classes: int) -> tuple[str, str] | None:
    if "label" not in obj:
        return "missing_label", "the object has no 'label'"
    label = obj["label"]
    if not isinstance(label, _NUMBER) or isinstance(label, bool) or not _finite(label):
        return "bad_label", "'label' must be a finite number"
    if task == "regression" and not abs(label) < FLOAT32_LIMIT:
        # The model trains in float32: such a label would be inf there, and its step's loss with it.
        return "bad_label", f"regression label {label!r} is not a finite float32 (|label| < 3.4028235e38)"
    if task == "classification":
        if label != int(label):
            return "bad_label", f"class label must be an integer, got {label!r}"
        if not 0 <= label < num_classes:
            return "label_out_of_range", f"class label {label!r} is outside [0, {num_classes})"
    return None


def _finite(x: int | float) -> bool:
    """Whether ``x`` is a finite float64 (an int too large for one is not; math.isfinite would raise)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _event_time(ts: Any) -> float:
    return float(ts) if ts is not None else math.nan


def _feature_matrix(
    rows: list[list[Any]], input_dim: int, records: Sequence[RawRecord] = ()
) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """Stack rows into float32 ``[n, input_dim]``; rows that are not all finite numbers are named.

    Fast path: numpy infers the type of the whole batch in one pass. A string, ``null``,
    object or nested array anywhere makes it something other than a number array; only
    booleans slip through as numbers, so the path is taken only when no record's JSON has a
    ``true`` or ``false`` in it (``records``, when given, are the rows' records).
    """
    if not rows:
        return np.zeros((0, input_dim), np.float32), {}
    if records and not _may_hold_booleans(records):
        try:
            inferred = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            inferred = None
        if inferred is not None and inferred.dtype.kind in "fiu" and inferred.shape == (len(rows), input_dim):
            with np.errstate(over="ignore"):
                matrix = inferred.astype(np.float32)
            return matrix, _non_finite_rows(matrix)
    try:
        with np.errstate(over="ignore"):
            matrix = np.asarray(rows, dtype=np.float32)
        if matrix.shape != (len(rows), input_dim) or _has_non_numbers(rows):
            raise ValueError("ragged or non-numeric")
    except (ValueError, TypeError, OverflowError):
        return _feature_matrix_row_by_row(rows, input_dim)
    return matrix, _non_finite_rows(matrix)


def _may_hold_booleans(records: Sequence[RawRecord]) -> bool:
    joined = b"\n".join([r.value for r in records if r.value is not None])
    return b"true" in joined or b"false" in joined


def _non_finite_rows(matrix: np.ndarray) -> dict[int, tuple[str, str]]:
    finite = np.isfinite(matrix).all(axis=1)
    if finite.all():
        return {}
    return {int(i): _NON_FINITE for i in np.flatnonzero(~finite)}


_NON_FINITE = ("non_finite_features", "'features' holds a value that is not a finite float32")


def _has_non_numbers(rows: list[list[Any]]) -> bool:
    # numpy turns booleans and numeric strings into numbers; the contract does not.
    return not set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES


_NUMBER_TYPES = {int, float}


def _feature_matrix_row_by_row(rows: list[list[Any]], input_dim: int) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    matrix = np.zeros((len(rows), input_dim), np.float32)
    bad: dict[int, tuple[str, str]] = {}
    for i, row in enumerate(rows):
        if any(type(v) not in (int, float) for v in row):
            bad[i] = ("bad_features", "'features' must hold only numbers")
            continue
        try:
            with np.errstate(over="ignore"):
                matrix[i] = np.asarray(row, dtype=np.float32)
        except (OverflowError, ValueError):
            bad[i] = _NON_FINITE
            continue
        if not np.isfinite(matrix[i]).all():
            bad[i] = _NON_FINITE
    return matrix, bad
