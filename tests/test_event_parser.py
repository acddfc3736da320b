"""The compiled event parser: what it reads, it reads as the general decoder does; what it
cannot read exactly, it leaves to that decoder; and plain events are what it reads."""

from __future__ import annotations

import json

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.intake.codec import _decode_events_one_by_one, decode_events
from stream_learner.intake.event_parser import parse_events
from stream_learner.records import RawRecord

DIM = 4


def record(value: bytes | None, partition: int = 0, offset: int = 0) -> RawRecord:
    return RawRecord("events", partition, offset, None, value)


def assert_parsed_rows_decode_alike(values: list[bytes | None], dim: int = DIM) -> np.ndarray:
    """Every value the parser read decodes to the same id, bits of features and ts one by one."""
    parsed = parse_events(values, dim)
    for i in np.flatnonzero(parsed.parsed).tolist():
        batch, rejected = _decode_events_one_by_one([record(values[i])], dim, 0.0)
        assert rejected == [], (values[i], rejected)
        assert batch.ids == [parsed.ids[i]]
        assert batch.features[0].tobytes() == parsed.features[i].tobytes(), (values[i], batch.features[0], parsed.features[i])
        assert np.array_equal(batch.ts[:1], parsed.ts[i : i + 1], equal_nan=True)
    return parsed.parsed


plain_ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1, max_size=20)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e6, 1e6).map(lambda x: round(x, 4)),
    st.integers(-(2**60), 2**60),
    st.sampled_from([0, -0.0, 0.0, 1e22, 1e-22, 9007199254740993, 3.4028235e38, 1e-45, 123456789012345678]),
)


@st.composite
def event_values(draw: st.DrawFn) -> bytes:
    """An event as some producer might write it: keys in any order, any spacing, ts or not."""
    members = [("id", draw(st.one_of(plain_ids, st.text(max_size=5)))), ("features", draw(st.lists(numbers, min_size=DIM - 1, max_size=DIM + 1)))]
    ts = draw(st.one_of(st.none(), st.just("null"), numbers))
    if ts is not None:
        members.append(("ts", None if ts == "null" else ts))
    members = draw(st.permutations(members))
    if draw(st.booleans()):
        return orjson.dumps(dict(members))
    indent = draw(st.sampled_from([None, 0, 2]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    return json.dumps(dict(members), indent=indent, separators=separators).encode()


@settings(max_examples=400, deadline=None)
@given(st.lists(event_values(), min_size=1, max_size=8))
def test_what_the_parser_reads_decodes_the_same_one_by_one(values: list[bytes]) -> None:
    assert_parsed_rows_decode_alike(values)


@settings(max_examples=400, deadline=None)
@given(event_values(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255), st.sampled_from(["put", "insert", "delete"])), min_size=1, max_size=3))
def test_a_damaged_event_is_read_as_the_general_decoder_reads_it_or_left_to_it(value: bytes, edits: list[tuple[int, int, str]]) -> None:
    damaged = bytearray(value)
    for at, byte, how in edits:
        at = at % (len(damaged) + 1)
        if how == "insert":
            damaged[at:at] = bytes([byte])
        elif damaged and at < len(damaged):
            if how == "put":
                damaged[at] = byte
            else:
                del damaged[at]
    assert_parsed_rows_decode_alike([bytes(damaged), value, None, b""])


def test_plain_events_are_read_by_the_parser() -> None:
    rng = np.random.default_rng(0)
    values = [
        orjson.dumps({"id": f"e-{i}", "features": np.round(rng.normal(size=DIM), 6).tolist(), "ts": 1700000000.0 + i / 1000})
        for i in range(200)
    ]
    values += [json.dumps({"ts": 1700000000, "features": [1, -2.5, 3e-5, 0], "id": "x"}, indent=2).encode(), b' {"id":"y","features":[0,0,0,0],"ts":null} ']
    assert assert_parsed_rows_decode_alike(values).all()


def test_values_it_cannot_read_exactly_are_left_to_the_general_decoder() -> None:
    values = [
        b'{"id":"a","features":[9007199254740993,1,2,3]}',  # an integer past 2**53
        b'{"id":"a","features":[1e400,1,2,3]}',  # not finite
        b'{"id":"a","features":[1,2,3,4],"ts":1e400}',
        b'{"id":"a","features":[true,1,2,3]}',
        b'{"id":"a","features":[1,2,3,4],"extra":1}',
        b'{"id":"a","id":"b","features":[1,2,3,4]}',
        b'{"id":"\\u00e9","features":[1,2,3,4]}',
        '{"id":"é","features":[1,2,3,4]}'.encode(),
        b'{"id":"","features":[1,2,3,4]}',
        b'{"id":"a","features":[1,2,3]}',
        b'{"id":"a","features":[1,2,3,4]} x',
        b'{"id":"a" "features":[1,2,3,4]}',
        b'{"id":"a","features":[01,2,3,4]}',
        b'{"id":"a","features":[1.,2,3,4]}',
        b'{"id":"a","features":[1,2,3,4],"ts":"now"}',
        None,
    ]
    assert not assert_parsed_rows_decode_alike(values).any()


def test_numbers_past_the_fast_path_are_read_by_python_as_the_general_decoder_reads_them() -> None:
    values = [
        b'{"id":"a","features":[0.15416284237967237,1,2,3]}',  # 17 significant digits
        b'{"id":"b","features":[1e23,-2.5e-30,3,4],"ts":1763951234.1234567}',  # exponents past 22, ts with 17 digits
        b'{"id":"c","features":[1.00000000000000000000001,0.1,0.2,0.3]}',
    ]
    parsed = parse_events(values, DIM)
    assert assert_parsed_rows_decode_alike(values).all()
    assert parsed.ts[1] == 1763951234.1234567 and parsed.features[1, 1] == np.float32(-2.5e-30)


def test_a_batch_with_too_many_numbers_for_python_is_left_to_the_general_decoder() -> None:
    values = [b'{"id":"a","features":[0.15416284237967237,0.25416284237967237,0.35416284237967237,4]}'] * 3
    assert not parse_events(values, DIM).parsed.all()


def test_a_batch_with_one_record_the_parser_cannot_read_decodes_as_before() -> None:
    good = [orjson.dumps({"id": f"e-{i}", "features": [i, 1, 2, 3]}) for i in range(5)]
    records = [record(v, partition=i % 2, offset=i) for i, v in enumerate([*good[:2], b'{"id":"a","features":[1,2]}', *good[2:]])]
    batch, rejected = decode_events(records, DIM, now=7.0)
    expected, expected_rejected = _decode_events_one_by_one(records, DIM, 7.0)
    assert batch.ids == expected.ids == [f"e-{i}" for i in range(5)]
    assert [r.reason for r in rejected] == [r.reason for r in expected_rejected] == ["wrong_feature_length"]
    np.testing.assert_array_equal(batch.partitions, [0, 1, 1, 0, 1])


def test_a_parsed_batch_is_the_batch_the_general_decoder_makes() -> None:
    values = [orjson.dumps({"id": f"e-{i}", "features": [i / 3, -i, 2.5, 0], "ts": 1700000000 + i}) for i in range(10)]
    records = [record(v, partition=i % 3, offset=i) for i, v in enumerate(values)]
    batch, rejected = decode_events(records, DIM, now=7.0)
    expected, _ = _decode_events_one_by_one(records, DIM, 7.0)
    assert rejected == [] and batch.ids == expected.ids
    assert batch.features.tobytes() == expected.features.tobytes()
    for name in ("ts", "received_at", "partitions"):
        np.testing.assert_array_equal(getattr(batch, name), getattr(expected, name))
