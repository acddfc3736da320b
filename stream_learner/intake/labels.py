"""Label records to one :class:`~stream_learner.records.LabelBatch`, bad ones to ``Rejected``.

A label value is the UTF-8 JSON object ``{"id": "...", "label": ...}`` (docs/contract.md);
keys beyond these are ignored. A batch whose every record is a plain label (a
non-empty string id and, for classification, an int class in range; for regression, a
float that is a finite float32) is checked as a whole; any other batch record by record,
which names what is wrong. Both give the same batch for the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from stream_learner.config_types import FLOAT32_LIMIT
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
from stream_learner.records import LabelBatch, RawRecord, ReadRecords, Rejected, as_read_records

_ids, _labels = itemgetter("id"), itemgetter("label")


@collector_paused()
def decode_labels(
    records: ReadRecords | Sequence[RawRecord], task: str, num_classes: int
) -> tuple[LabelBatch, list[Rejected]]:
    """Decode label records; ids and values are checked against the task (``records`` as for ``decode_events``).

    A class label is an integer in ``[0, num_classes)``; a regression label a number that is a
    finite float32, the type the model trains in (``bad_label`` otherwise). Good records keep
    their order.
    """
    read = as_read_records(records)
    values = read.values()
    objects = load_all(values)
    plain = None if objects is None else _plain_fields(objects, task, num_classes)
    if plain is None:
        return _decode_one_by_one(read, values, objects, task, num_classes)
    ids, labels = plain
    return _assemble(read, None, ids, labels), []


def _plain_fields(objects: list[Any], task: str, num_classes: int) -> tuple[list[str], list[Any]] | None:
    """The ids and labels of a batch of plain labels, or ``None`` if one is not."""
    try:
        ids, labels = list(map(_ids, objects)), list(map(_labels, objects))
    except (KeyError, TypeError):  # a missing key, or a value that is no object
        return None
    if not all_ids(ids):
        return None
    if task == "classification":
        plain = set(map(type, labels)) == {int} and 0 <= min(labels) and max(labels) < num_classes
    else:
        plain = set(map(type, labels)) == {float} and max(map(abs, labels)) < FLOAT32_LIMIT
    return (ids, labels) if plain else None


def _decode_one_by_one(
    read: ReadRecords, values: list[bytes | None], objects: list[Any] | None, task: str, num_classes: int
) -> tuple[LabelBatch, list[Rejected]]:
    """Each record checked on its own (``objects``: the values read already, if every one is JSON)."""
    keep: list[int] = []
    ids: list[str] = []
    labels: list[Any] = []
    rejected: list[Rejected] = []
    for i, value in enumerate(values):
        obj, problem = (objects[i], None) if objects is not None else load_json(value)
        problem = problem or check_object(obj) or check_id(obj) or _check_label(obj, task, num_classes)
        if problem is not None:
            rejected.append(Rejected(read.raw(i), *problem))
            continue
        keep.append(i)
        ids.append(obj["id"])
        labels.append(obj["label"])
    return _assemble(read, np.array(keep, np.int64), ids, labels), rejected


def _check_label(obj: dict[str, Any], task: str, num_classes: int) -> Problem | None:
    if "label" not in obj:
        return "missing_label", "the object has no 'label'"
    label = obj["label"]
    if not is_finite_number(label):
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


def _assemble(read: ReadRecords, kept: np.ndarray | None, ids: list[str], labels: list[Any]) -> LabelBatch:
    """The labels of rows ``kept`` of ``read`` (None: all)."""
    offsets, partitions = read.offsets(), read.partitions()
    if kept is not None:
        offsets, partitions = offsets[kept], partitions[kept]
    return LabelBatch(ids, np.array(labels, dtype=np.float64), offsets, partitions)
