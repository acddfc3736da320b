"""Intake decoders (events, labels) and the predictions encoder.

Decoders never raise; bad records come back as Rejected, good ones around them decode in order,
and a record decodes the same alone as in any batch.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.intake.events import decode_events
from stream_learner.intake.labels import decode_labels
from stream_learner.kafka.predictions import encode_predictions
from stream_learner.records import EventBatch, Predictions, RawRecord

DIM = 3


def record(value: bytes | None, offset: int = 0) -> RawRecord:
    return RawRecord("events", 1, offset, b"key", value, (("h", b"v"),), 1234)


def event(event_id: str, features: list[float], **extra: object) -> bytes:
    return orjson.dumps({"id": event_id, "features": features, **extra})


def test_good_events_decode_to_float32_rows_with_ts_and_received_at() -> None:
    records = [record(event("a", [1, 2.5, -3], ts=1700000000.5)), record(event("b", [0, 0, 1e-3]))]
    batch, rejected = decode_events(records, DIM, now=42.0)
    assert rejected == []
    assert batch.ids == ["a", "b"]
    assert batch.features.dtype == np.float32
    np.testing.assert_array_equal(batch.features, np.array([[1, 2.5, -3], [0, 0, 1e-3]], np.float32))
    assert batch.ts[0] == 1700000000.5 and math.isnan(batch.ts[1])
    np.testing.assert_array_equal(batch.received_at, [42.0, 42.0])


def test_integer_ts_decodes_like_a_float_one_and_a_boolean_one_is_rejected() -> None:
    values = [event("a", [1, 2, 3], ts=1700000000), event("b", [1, 2, 3], ts=2**60), event("c", [1, 2, 3], ts=True)]
    batch, rejected = decode_events([record(v, offset=i) for i, v in enumerate(values)], DIM, now=0.0)
    assert batch.ids == ["a", "b"]
    assert batch.ts.dtype == np.float64
    np.testing.assert_array_equal(batch.ts, [1700000000.0, float(2**60)])
    assert [(r.record.offset, r.reason) for r in rejected] == [(2, "bad_ts")]


BAD_EVENTS = [
    pytest.param(b"not json", "invalid_json", id="not-json"),
    pytest.param(b'{"id": "x", "features": [1, 2, NaN]}', "invalid_json", id="nan-literal"),
    pytest.param(b'{"id": "x", "features": [1, 2, Infinity]}', "invalid_json", id="infinity-literal"),
    pytest.param(b'{"id": "x", "features": [1, 2, 1e400]}', "invalid_json", id="float64-overflow"),
    pytest.param(None, "empty_value", id="tombstone"),
    pytest.param(b"[1, 2, 3]", "not_an_object", id="json-array"),
    pytest.param(b'"x"', "not_an_object", id="json-string"),
    pytest.param(b'{"features": [1, 2, 3]}', "missing_id", id="missing-id"),
    pytest.param(b'{"id": 7, "features": [1, 2, 3]}', "bad_id", id="int-id"),
    pytest.param(b'{"id": "", "features": [1, 2, 3]}', "bad_id", id="empty-id"),
    pytest.param(b'{"id": "x"}', "missing_features", id="missing-features"),
    pytest.param(b'{"id": "x", "features": "1,2,3"}', "bad_features", id="features-string"),
    pytest.param(b'{"id": "x", "features": {"a": 1}}', "bad_features", id="features-object"),
    pytest.param(b'{"id": "x", "features": [1, 2]}', "wrong_feature_length", id="too-short"),
    pytest.param(b'{"id": "x", "features": [1, 2, 3, 4]}', "wrong_feature_length", id="too-long"),
    pytest.param(b'{"id": "x", "features": [1, "2", 3]}', "bad_features", id="numeric-string"),
    pytest.param(b'{"id": "x", "features": [1, true, 3]}', "bad_features", id="boolean"),
    pytest.param(b'{"id": "x", "features": [1, null, 3]}', "bad_features", id="null"),
    pytest.param(b'{"id": "x", "features": [[1], [2], [3]]}', "bad_features", id="nested-lists"),
    pytest.param(b'{"id": "x", "features": [[1, 2], [3, 4], [5, 6]]}', "bad_features", id="nested-rectangular"),
    pytest.param(b'{"id": "x", "features": [1, 2, 3], "ts": "yesterday"}', "bad_ts", id="ts-string"),
    pytest.param(b'{"id": "x", "features": [1, 2, 3], "ts": true}', "bad_ts", id="ts-bool"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_EVENTS)
def test_bad_event_is_rejected_unchanged_and_neighbours_still_decode(value: bytes | None, reason: str) -> None:
    bad = record(value, offset=1)
    records = [record(event("before", [1, 2, 3]), 0), bad, record(event("after", [4, 5, 6]), 2)]
    batch, rejected = decode_events(records, DIM, now=0.0)
    assert batch.ids == ["before", "after"]
    np.testing.assert_array_equal(batch.features, [[1, 2, 3], [4, 5, 6]])
    assert len(rejected) == 1
    assert rejected[0].reason == reason
    assert rejected[0].record is bad and rejected[0].record == record(value, offset=1)
    assert rejected[0].detail


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"id": "x", "features": [1, 2, 1e39]}', id="1e39"),
        pytest.param(b'{"id": "x", "features": [1, 2, -1e39]}', id="minus-1e39"),
        pytest.param(b'{"id": "x", "features": [1, 2, 1' + b"0" * 60 + b"]}", id="huge-int"),
    ],
)
def test_value_overflowing_float32_is_rejected_as_non_finite(value: bytes) -> None:
    records = [record(event("before", [1, 2, 3])), record(value), record(event("after", [4, 5, 6]))]
    batch, rejected = decode_events(records, DIM, now=0.0)
    assert batch.ids == ["before", "after"]
    assert [r.reason for r in rejected] == ["non_finite_features"]
    assert np.isfinite(batch.features).all()


def test_uint64_sized_int_within_float32_range_is_accepted() -> None:
    batch, rejected = decode_events([record(event("x", [18446744073709551615, 0, 0]))], DIM, now=0.0)
    assert rejected == []
    assert batch.features[0, 0] == np.float32(18446744073709551615)


def test_several_bad_records_keep_good_ones_in_order() -> None:
    values = [
        event("a", [1, 2, 3]),
        b"{",
        event("b", [1, 2]),
        event("c", [7, 8, 9]),
        b'{"id": "d", "features": [1, "x", 3]}',
        event("e", [0, 0, 0]),
    ]
    records = [record(v, offset=i) for i, v in enumerate(values)]
    batch, rejected = decode_events(records, DIM, now=0.0)
    assert batch.ids == ["a", "c", "e"]
    np.testing.assert_array_equal(batch.features, [[1, 2, 3], [7, 8, 9], [0, 0, 0]])
    assert sorted((r.record.offset, r.reason) for r in rejected) == [
        (1, "invalid_json"),
        (2, "wrong_feature_length"),
        (4, "bad_features"),
    ]


def test_records_of_several_partitions_decode_in_one_batch_that_knows_each_ones_partition() -> None:
    events = [
        RawRecord("events", p, o, None, event(f"e{p}{o}", [p, o, 0])) for p, o in [(2, 5), (0, 7), (2, 6), (3, 0)]
    ]
    batch, rejected = decode_events([events[0], record(b"{", offset=9), *events[1:]], DIM, now=0.0)
    assert [r.record.offset for r in rejected] == [9]
    assert batch.ids == ["e25", "e07", "e26", "e30"]
    np.testing.assert_array_equal(batch.partitions, [2, 0, 2, 3])
    labels = [RawRecord("labels", p, o, None, label(f"e{p}{o}", 1)) for p, o in [(1, 4), (0, 8), (1, 5)]]
    decoded, rejected = decode_labels(
        [labels[0], RawRecord("labels", 0, 9, None, b"[]"), *labels[1:]], "classification", 2
    )
    assert [r.record.offset for r in rejected] == [9]
    np.testing.assert_array_equal(decoded.partitions, [1, 0, 1])
    np.testing.assert_array_equal(decoded.offsets, [4, 8, 5])


def test_all_records_bad_gives_an_empty_batch_of_the_right_width() -> None:
    batch, rejected = decode_events([record(b"x"), record(b"[]")], DIM, now=0.0)
    assert len(batch) == 0 and batch.features.shape == (0, DIM)
    assert len(rejected) == 2


FEATURE_VALUES = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=3),
)
JSON_EVENTS = st.builds(lambda f: orjson.dumps({"id": "x", "features": f}), st.lists(FEATURE_VALUES, max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=64), JSON_EVENTS), max_size=8))
def test_decode_events_never_raises_and_accounts_for_every_record(values: list[bytes | None]) -> None:
    records = [record(v, offset=i) for i, v in enumerate(values)]
    batch, rejected = decode_events(records, DIM, now=0.0)
    assert len(batch) + len(rejected) == len(records)
    assert batch.features.shape == (len(batch), DIM) and np.isfinite(batch.features).all()


Outcome = tuple[str, ...]


def outcomes(values: Sequence[bytes | None], dim: int = DIM) -> list[Outcome]:
    """What became of each value decoded in one batch: its id, features' bits and ts, or its rejection."""
    batch, rejected = decode_events([record(v, offset=i) for i, v in enumerate(values)], dim, now=7.0)
    assert len(batch) + len(rejected) == len(values)
    np.testing.assert_array_equal(batch.received_at, np.full(len(batch), 7.0))
    out: dict[int, Outcome] = {r.record.offset: (r.reason, r.detail) for r in rejected}
    good = sorted(set(range(len(values))) - set(out))
    for i, event_id, row, ts in zip(good, batch.ids, batch.features, batch.ts.tolist(), strict=True):
        out[i] = ("ok", event_id, row.tobytes().hex(), repr(ts))
    return [out[i] for i in range(len(values))]


def outcomes_alone(values: Sequence[bytes | None], dim: int = DIM) -> list[Outcome]:
    return [outcomes([v], dim)[0] for v in values]


def expected(event_id: str, features: list[Any], ts: float = math.nan) -> Outcome:
    """A good event: each feature the float32 nearest the float64 its JSON number reads as."""
    return ("ok", event_id, np.asarray(features, np.float64).astype(np.float32).tobytes().hex(), repr(ts))


PLAIN_IDS = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e6, 1e6).map(lambda x: round(x, 4)),
    st.integers(-(2**60), 2**60),
    st.sampled_from([0, -0.0, 1e22, 1e-22, 9007199254740993, 2**60 + 2**36 + 1, 3.4028235e38, 1e-45]),
)


@st.composite
def event_values(draw: st.DrawFn) -> bytes:
    """An event as some producer might write it: keys in any order, any spacing, ts or not, right length or not."""
    features = draw(st.lists(NUMBERS, min_size=DIM - 1, max_size=DIM + 1))
    members: list[tuple[str, object]] = [
        ("id", draw(st.one_of(PLAIN_IDS, st.text(max_size=5)))),
        ("features", features),
    ]
    ts = draw(st.one_of(st.none(), st.just("null"), NUMBERS))
    if ts is not None:
        members.append(("ts", None if ts == "null" else ts))
    obj = dict(draw(st.permutations(members)))
    if draw(st.booleans()):
        return orjson.dumps(obj)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    return json.dumps(obj, indent=draw(st.sampled_from([None, 0, 2])), separators=separators).encode()


@settings(max_examples=400, deadline=None)
@given(st.lists(event_values(), min_size=1, max_size=8))
def test_an_event_decodes_as_its_json_reads_alone_or_in_any_batch(values: list[bytes]) -> None:
    got = outcomes(values)
    assert got == outcomes_alone(values)
    for value, outcome in zip(values, got, strict=True):
        obj = json.loads(value)
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.asarray(obj["features"], np.float64).astype(np.float32)).all()
        wrong_length = len(obj["features"]) != DIM
        if obj["id"] == "" or wrong_length or not finite:
            reason = "bad_id" if obj["id"] == "" else "wrong_feature_length" if wrong_length else "non_finite_features"
            assert outcome[0] == reason, (value, outcome)
        else:
            ts = obj.get("ts")
            assert outcome == expected(obj["id"], obj["features"], math.nan if ts is None else float(ts))


@settings(max_examples=400, deadline=None)
@given(event_values(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255), st.integers(0, 2)), max_size=3))
def test_a_damaged_event_decodes_alike_alone_and_among_others(value: bytes, edits: list[tuple[int, int, int]]) -> None:
    damaged = bytearray(value)
    for at, byte, how in edits:  # how: 0 puts, 1 inserts, 2 deletes a byte
        at = at % (len(damaged) + 1)
        if how == 1:
            damaged[at:at] = bytes([byte])
        elif at < len(damaged):
            damaged[at : at + 1] = bytes([byte]) if how == 0 else b""
    values = [bytes(damaged), value, None, b""]
    assert outcomes(values) == outcomes_alone(values)


def test_plain_events_in_any_layout_decode_as_their_json_reads() -> None:
    rng = np.random.default_rng(0)
    features = [np.round(rng.normal(size=DIM), 6).tolist() for _ in range(200)]
    values = [
        orjson.dumps({"id": f"e-{i}", "features": f, "ts": 1700000000.0 + i / 1000}) for i, f in enumerate(features)
    ]
    values += [
        json.dumps({"ts": 1700000000, "features": [1, -2.5, 3e-5], "id": "x"}, indent=2).encode(),
        b' {"id":"y","features":[0,0,0],"ts":null} ',
    ]
    want = [expected(f"e-{i}", f, 1700000000.0 + i / 1000) for i, f in enumerate(features)]
    assert outcomes(values) == [*want, expected("x", [1, -2.5, 3e-5], 1700000000.0), expected("y", [0, 0, 0])]


def test_what_each_edge_case_decodes_to_alone_and_in_a_batch() -> None:
    cases: list[tuple[bytes | None, str | Outcome]] = [
        (b'{"id":"a","features":[9007199254740993,1,2,3]}', expected("a", [9007199254740993, 1, 2, 3])),
        (b'{"id":"a","features":[1e400,1,2,3]}', "invalid_json"),
        (b'{"id":"a","features":[1,2,3,4],"ts":1e400}', "invalid_json"),
        (b'{"id":"a","features":[true,1,2,3]}', "bad_features"),
        (b'{"id":"a","features":[1,2,3,4],"extra":1}', expected("a", [1, 2, 3, 4])),
        (b'{"id":"a","id":"b","features":[1,2,3,4]}', expected("b", [1, 2, 3, 4])),
        (b'{"id":"\\u00e9","features":[1,2,3,4]}', expected("\u00e9", [1, 2, 3, 4])),
        ('{"id":"é","features":[1,2,3,4]}'.encode(), expected("\u00e9", [1, 2, 3, 4])),
        (b'{"id":"","features":[1,2,3,4]}', "bad_id"),
        (b'{"id":"a","features":[1,2,3]}', "wrong_feature_length"),
        (b'{"id":"a","features":[1,2,3,4]} x', "invalid_json"),
        (b'{"id":"a" "features":[1,2,3,4]}', "invalid_json"),
        (b'{"id":"a","features":[01,2,3,4]}', "invalid_json"),
        (b'{"id":"a","features":[1.,2,3,4]}', "invalid_json"),
        (b'{"id":"a","features":[1,2,3,4],"ts":"now"}', "bad_ts"),
        (None, "empty_value"),
    ]
    values = [value for value, _ in cases]
    got = outcomes(values, dim=4)
    assert got == outcomes_alone(values, dim=4)
    assert [o if o[0] == "ok" else o[0] for o in got] == [want for _, want in cases]


def test_numbers_of_many_digits_or_large_exponents_decode_exactly() -> None:
    values = [
        b'{"id":"a","features":[0.15416284237967237,1,2]}',
        b'{"id":"b","features":[1e23,-2.5e-30,3],"ts":1763951234.1234567}',
        b'{"id":"c","features":[1.00000000000000000000001,0.1,0.2]}',
    ]
    assert outcomes(values) == [
        expected("a", [0.15416284237967237, 1, 2]),
        expected("b", [1e23, -2.5e-30, 3], 1763951234.1234567),
        expected("c", [1.0, 0.1, 0.2]),
    ]


def test_an_integer_feature_is_the_float32_nearest_its_float64_whatever_else_is_in_the_batch() -> None:
    # Rounded straight to float32 this integer would round up; as a float64 it is a tie that rounds down.
    big = 2**60 + 2**36 + 1
    alone, mixed = outcomes([event("a", [big, 0, 0])]), outcomes([event("a", [big, 0, 0]), event("b", [0.5, 0, 0])])
    assert alone[0] == mixed[0] == expected("a", [float(big), 0, 0])


def test_a_bad_record_does_not_change_how_its_neighbours_decode() -> None:
    values = [orjson.dumps({"id": f"e-{i}", "features": [i / 3, -i, 2.5], "ts": 1700000000 + i}) for i in range(10)]
    records = [RawRecord("events", i % 3, i, None, v) for i, v in enumerate(values)]
    batch, rejected = decode_events(records, DIM, now=7.0)
    mixed, mixed_rejected = decode_events(
        [*records[:4], record(b'{"id":"a","features":[1,2]}', 99), *records[4:]], DIM, 7.0
    )
    assert rejected == [] and [r.reason for r in mixed_rejected] == ["wrong_feature_length"]
    assert batch.ids == mixed.ids == [f"e-{i}" for i in range(10)]
    assert batch.features.tobytes() == mixed.features.tobytes()
    for name in ("ts", "received_at", "partitions"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(mixed, name))
    np.testing.assert_array_equal(batch.partitions, [i % 3 for i in range(10)])


def test_decoders_leave_the_garbage_collector_on_or_off_as_they_found_it() -> None:
    values = [event("a", [1, 2, 3]), b"{"]
    for enabled in (True, False):
        gc.enable() if enabled else gc.disable()
        try:
            decode_events([record(v) for v in values], DIM, now=0.0)
            decode_labels([record(label("a", 1)), record(b"{")], "classification", 2)
            assert gc.isenabled() is enabled
        finally:
            gc.enable()


def label(event_id: object, value: object) -> bytes:
    return orjson.dumps({"id": event_id, "label": value})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b'{"id": "x"}', "missing_label", id="missing-label"),
        pytest.param(b'{"label": 1}', "missing_id", id="missing-id"),
        pytest.param(label(3, 1), "bad_id", id="int-id"),
        pytest.param(label("x", True), "bad_label", id="bool"),
        pytest.param(label("x", "1"), "bad_label", id="string"),
        pytest.param(label("x", None), "bad_label", id="null"),
        pytest.param(label("x", 1.5), "bad_label", id="non-integer-class"),
        pytest.param(label("x", 3), "label_out_of_range", id="too-big"),
        pytest.param(label("x", -1), "label_out_of_range", id="negative"),
        pytest.param(b'{"id": "x", "label": NaN}', "invalid_json", id="nan"),
        pytest.param(b"[1]", "not_an_object", id="array"),
    ],
)
def test_bad_classification_label_is_rejected(value: bytes, reason: str) -> None:
    bad = record(value, offset=1)
    batch, rejected = decode_labels(
        [record(label("a", 0)), bad, record(label("b", 2.0))], "classification", num_classes=3
    )
    assert batch.ids == ["a", "b"]
    np.testing.assert_array_equal(batch.labels, [0.0, 2.0])
    assert [(r.record, r.reason) for r in rejected] == [(bad, reason)]


FLOAT32_MAX = float(np.finfo(np.float32).max)


def raw_label(event_id: str, value: float) -> bytes:
    """A label as JSON text, integers beyond 64 bits included (which orjson does not write)."""
    return b'{"id": "' + event_id.encode() + b'", "label": ' + repr(value).encode() + b"}"


def test_regression_label_accepts_any_finite_float32() -> None:
    # 3.4028235e38 is above float32's largest value as a double, but rounds to it.
    values = [-3.4028235e38, 0.25, 3, 1e30, -7.5, FLOAT32_MAX, 10**38, 1e-45]
    batch, rejected = decode_labels(
        [record(raw_label(f"e{i}", v)) for i, v in enumerate(values)], "regression", num_classes=2
    )
    assert rejected == []
    assert batch.labels.dtype == np.float64
    np.testing.assert_array_equal(batch.labels, [float(v) for v in values])
    assert np.isfinite(batch.labels.astype(np.float32)).all()


@pytest.mark.parametrize(
    "value",
    [1e39, -1e300, 3.4028236e38, 10**39, -(10**300), 1.7976931348623157e308],
    ids=["1e39", "-1e300", "just-past-float32", "int-10e39", "int-minus-10e300", "double-max"],
)
def test_regression_label_that_is_no_finite_float32_is_rejected(value: float) -> None:
    """The model trains in float32: such a label is inf there, and the loss of every example in its step with it."""
    bad = record(raw_label("x", value), offset=1)
    batch, rejected = decode_labels([record(label("a", 1.5)), bad, record(label("b", -2))], "regression", num_classes=2)
    assert batch.ids == ["a", "b"]
    assert [(r.record, r.reason) for r in rejected] == [(bad, "bad_label")]
    assert "float32" in rejected[0].detail


def test_regression_label_still_rejects_non_numbers() -> None:
    _, rejected = decode_labels([record(label("x", False)), record(label("y", [1.0]))], "regression", num_classes=2)
    assert [r.reason for r in rejected] == ["bad_label", "bad_label"]


def predictions(scores: list[list[float]], ts: list[float]) -> Predictions:
    n = len(scores)
    events = EventBatch(
        [f"e-{i}" for i in range(n)], np.zeros((n, DIM), np.float32), np.asarray(ts, np.float64), np.zeros(n)
    )
    return Predictions(events, np.asarray(scores, np.float32), model_version=17)


def test_encode_classification_predictions() -> None:
    out = [
        orjson.loads(b)
        for b in encode_predictions(
            predictions([[0.2, 0.7, 0.1], [0.9, 0.05, 0.05]], [1700000000.25, math.nan]), "classification"
        )
    ]
    assert out[0] == {
        "id": "e-0",
        "prediction": 1,
        "scores": pytest.approx([0.2, 0.7, 0.1], abs=1e-6),
        "model_version": 17,
        "ts": 1700000000.25,
    }
    assert out[1] == {
        "id": "e-1",
        "prediction": 0,
        "scores": pytest.approx([0.9, 0.05, 0.05], abs=1e-6),
        "model_version": 17,
    }
    assert isinstance(out[0]["prediction"], int)


def test_encode_regression_predictions_have_no_scores() -> None:
    out = [orjson.loads(b) for b in encode_predictions(predictions([[2.5], [-1.0]], [math.nan, 5.0]), "regression")]
    assert out == [
        {"id": "e-0", "prediction": 2.5, "model_version": 17},
        {"id": "e-1", "prediction": -1.0, "model_version": 17, "ts": 5.0},
    ]
