"""Fuzzed topics: good events and labels mixed with every kind of bad record the contract names,
produced to a real broker and read by the service as a real child process.

Each record is built with what the contract (README, "The contract") says becomes of it: a
dead letter with its reason, a prediction, a join, an early label that waits for an event that
never comes, or a duplicate label. Then the topics and the final checkpoint must say exactly that.
Hypothesis draws the plan (kinds, ids, values, partitions, order); the large values (100k-number
arrays, a 5 MB value) are built from markers, so a falsifying example prints small.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.tools.broker import ensure_topics

from .conftest import INPUT_DIM, TOPIC_PARTITIONS, BrokerInfo, StartService
from .observe import read_to_end, wait_for_progress
from .service_process import checkpoint_show

pytestmark = pytest.mark.integration

HUGE = 100_000
"""Numbers in a huge array."""
FIVE_MB = 5 * 1024 * 1024

# --- what gets produced ------------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    """One record to produce and its fate under the contract."""

    topic: str
    """"events" or "labels"."""
    template: bytes | None
    """The value, where ``\\0HUGE\\0`` stands for an array of 100k numbers and ``\\0FIVE_MB\\0`` for a 5 MB
    event (NUL bytes: JSON text escapes them, so no drawn value holds a marker but by chance)."""
    reason: str | None
    """Dead-letter reason; None for a good record."""
    id: str | None = None
    """Good records: the event id."""
    partition: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's own headers (a dead letter keeps them, before its dlq.* ones)."""

    @property
    def key(self) -> bytes:
        return (self.id or "bad").encode()

    @property
    def value(self) -> bytes | None:
        if self.template == b"\0FIVE_MB\0":
            return _five_mb_event("five-mb")
        return None if self.template is None else self.template.replace(b"\0HUGE\0", _huge_array())

    def __repr__(self) -> str:  # short: a falsifying example lists every record
        headers = f", headers={self.headers}" if self.headers else ""
        return f"Rec({self.topic}[{self.partition}], {self.reason or 'good'}, {self.template!r}{headers})"


def _dumps(obj: Any) -> bytes:
    # stdlib json, not orjson: it writes integers beyond 64 bits (10**39), which are valid JSON.
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


@functools.cache
def _huge_array() -> bytes:
    return b"[" + b",".join(b"%d.25" % (i % 1000) for i in range(HUGE)) + b"]"


@functools.cache
def _five_mb_event(event_id: str) -> bytes:
    head, tail = b'{"id":' + _dumps(event_id) + b',"features":[', b"]}"
    numbers = b"0.5," * ((FIVE_MB - len(head) - len(tail)) // 4)
    value = head + numbers[:-1] + tail
    return value + b" " * (FIVE_MB - len(value))  # JSON allows trailing white space: exactly 5 MiB


def _is_json(value: bytes) -> bool:
    """An oracle independent of the service's decoder: strict UTF-8, stdlib json, no NaN/Infinity."""

    def reject(name: str) -> None:
        raise ValueError(name)

    try:
        json.loads(value.decode("utf-8"), parse_constant=reject)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


# --- strategies ----------------------------------------------------------------------------

ID_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
"""Fuzzed id tails: any Unicode but lone surrogates (ids travel as UTF-8 keys); long ones take the join's digest
path."""
GOOD_NUMBER = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.integers(-1000, 1000))
GOOD_FEATURES = st.lists(GOOD_NUMBER, min_size=INPUT_DIM, max_size=INPUT_DIM)
GOOD_TS = st.one_of(st.none(), st.floats(0, 2e9), st.integers(0, 2_000_000_000), st.just("null"))
NOT_A_NUMBER: st.SearchStrategy[Any] = st.sampled_from(["1.5", "a", True, False, None, [], {}, [1.0]])
NOT_AN_OBJECT = st.sampled_from([b"[]", b"[1, 2]", b'"e-1"', b"42", b"-0.5", b"null", b"true", b"false"])
HEADERS = st.lists(st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=12)), max_size=2).map(tuple)
LABEL = st.sampled_from([0, 1, 0.0, 1.0, -0.0])
"""Good class labels; 1.0 and -0.0 are integral numbers, hence classes too."""


def _event_obj(event_id: Any, features: Any, ts: Any, extra: dict[str, Any]) -> dict[str, Any]:
    obj = {**extra, "id": event_id, "features": features}
    if ts is not None:
        obj["ts"] = None if ts == "null" else ts
    return obj


EXTRA = st.dictionaries(
    st.sampled_from(["source", "note", "v"]), st.one_of(st.integers(), ID_TEXT, st.none()), max_size=2
)


@st.composite
def good_event(draw: st.DrawFn, event_id: str) -> bytes:
    return _dumps(_event_obj(event_id, draw(GOOD_FEATURES), draw(GOOD_TS), draw(EXTRA)))


@st.composite
def bad_event(draw: st.DrawFn, kind: str, event_id: str) -> tuple[bytes | None, str]:
    """A bad event of ``kind`` with exactly one defect, and the contract's reason for it."""
    features: list[Any] = draw(GOOD_FEATURES)
    ts = draw(st.one_of(st.none(), st.floats(0, 2e9)))
    if kind == "arbitrary_bytes":
        value = draw(st.binary(max_size=60).filter(lambda b: not _is_json(b)))
        return value, "invalid_json"
    if kind == "truncated":
        whole = draw(good_event(event_id))
        return whole[: draw(st.integers(0, len(whole) - 1))], "invalid_json"
    if kind == "tombstone":
        return None, "empty_value"
    if kind == "not_an_object":
        return draw(NOT_AN_OBJECT), "not_an_object"
    if kind == "missing_id":
        return _dumps({"features": features}), "missing_id"
    if kind == "bad_id":
        return _dumps({"id": draw(st.sampled_from([0, 7.5, None, "", [], {}, True])), "features": features}), "bad_id"
    if kind == "missing_features":
        return _dumps({"id": event_id, **draw(st.sampled_from([{}, {"features": None}]))}), "missing_features"
    if kind in FEATURE_DEFECTS:
        return _bad_features(draw, kind, event_id, features, ts)
    if kind == "bad_ts":
        return _dumps(
            {"id": event_id, "features": features, "ts": draw(st.sampled_from(["1700000000", True, [], {"s": 1}]))}
        ), "bad_ts"
    raise AssertionError(kind)


FEATURE_DEFECTS = ("bad_features", "wrong_feature_length", "non_finite", "nan_literal")


def _bad_features(
    draw: st.DrawFn, kind: str, event_id: str, features: list[Any], ts: float | None
) -> tuple[bytes | None, str]:
    """A bad event of ``kind`` (one of FEATURE_DEFECTS), whose one defect is in its features."""
    if kind == "bad_features":
        if draw(st.booleans()):
            return _dumps(
                {"id": event_id, "features": draw(st.sampled_from(["1,2,3", 5, {"a": 1}, True]))}
            ), "bad_features"
        features[draw(st.integers(0, INPUT_DIM - 1))] = draw(NOT_A_NUMBER)
        return _dumps(_event_obj(event_id, features, ts, {})), "bad_features"
    if kind == "wrong_feature_length":
        length = draw(
            st.one_of(st.integers(0, INPUT_DIM - 1), st.integers(INPUT_DIM + 1, 3 * INPUT_DIM), st.just(HUGE))
        )
        if length == HUGE:
            return b'{"id":' + _dumps(event_id) + b',"features":\0HUGE\0}', "wrong_feature_length"
        return _dumps(
            {"id": event_id, "features": draw(st.lists(GOOD_NUMBER, min_size=length, max_size=length))}
        ), "wrong_feature_length"
    if kind == "non_finite":
        # Finite JSON numbers beyond float32 (a 10**39 int too: the decoder reads it as a double).
        features[draw(st.integers(0, INPUT_DIM - 1))] = draw(st.sampled_from([1e39, -3.5e38, 1.7e308, 10**39]))
        return _dumps(_event_obj(event_id, features, ts, {})), "non_finite_features"
    if kind == "nan_literal":
        text = _dumps({"id": event_id, "features": features})
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
        first = text.index(b"[") + 1
        return text[:first] + literal + b"," + text[first:].split(b",", 1)[1], "invalid_json"
    raise AssertionError(kind)


@st.composite
def bad_label(draw: st.DrawFn, kind: str, event_id: str) -> tuple[bytes | None, str]:
    if kind == "arbitrary_bytes":
        return draw(st.binary(max_size=60).filter(lambda b: not _is_json(b))), "invalid_json"
    if kind == "truncated":
        whole = _dumps({"id": event_id, "label": draw(LABEL)})
        return whole[: draw(st.integers(0, len(whole) - 1))], "invalid_json"
    if kind == "tombstone":
        return None, "empty_value"
    if kind == "not_an_object":
        return draw(NOT_AN_OBJECT), "not_an_object"
    if kind == "missing_id":
        return _dumps({"label": 1}), "missing_id"
    if kind == "bad_id":
        return _dumps({"id": draw(st.sampled_from([3, None, "", ["e"], False])), "label": 1}), "bad_id"
    if kind == "missing_label":
        return _dumps({"id": event_id, "value": 1}), "missing_label"
    if kind == "bad_label":
        label = draw(st.sampled_from(["1", True, None, [], [1], 0.5, "huge"]))
        if label == "huge":
            return b'{"id":' + _dumps(event_id) + b',"label":\0HUGE\0}', "bad_label"
        return _dumps({"id": event_id, "label": label}), "bad_label"
    if kind == "label_out_of_range":
        return _dumps(
            {"id": event_id, "label": draw(st.sampled_from([-1, 2, 7, -1.0, 3.0, 10**30]))}
        ), "label_out_of_range"
    if kind == "nan_literal":
        return b'{"id": ' + _dumps(event_id) + b', "label": ' + draw(
            st.sampled_from([b"NaN", b"-Infinity"])
        ) + b"}", "invalid_json"
    raise AssertionError(kind)


BAD_EVENT_KINDS = [
    "arbitrary_bytes",
    "truncated",
    "tombstone",
    "not_an_object",
    "missing_id",
    "bad_id",
    "missing_features",
    "bad_features",
    "wrong_feature_length",
    "non_finite",
    "nan_literal",
    "bad_ts",
]
BAD_LABEL_KINDS = [
    "arbitrary_bytes",
    "truncated",
    "tombstone",
    "not_an_object",
    "missing_id",
    "bad_id",
    "missing_label",
    "bad_label",
    "label_out_of_range",
    "nan_literal",
]


@st.composite
def streams(draw: st.DrawFn) -> list[Rec]:
    """Events and labels: every bad kind at least once, among good events, their labels, duplicate
    labels, labels for events that never come (also for bad events' ids), a huge array of each
    topic and one 5 MB event. Each topic in a drawn order, each record on a drawn partition."""
    partition = st.integers(0, TOPIC_PARTITIONS - 1)
    events: list[Rec] = []
    good_ids = [f"e{i}-{draw(ID_TEXT)}" for i in range(draw(st.integers(20, 60)))]
    events += [Rec("events", draw(good_event(i)), None, i, draw(partition)) for i in good_ids]
    kinds = BAD_EVENT_KINDS + draw(st.lists(st.sampled_from(BAD_EVENT_KINDS), max_size=15))
    bad_ids = [f"b{n}-{draw(ID_TEXT)}" for n in range(len(kinds))]
    for kind, event_id in zip(kinds, bad_ids, strict=True):
        value, reason = draw(bad_event(kind, event_id))
        events.append(Rec("events", value, reason, None, draw(partition), draw(HEADERS)))
    events.append(
        Rec("events", b'{"id":"huge","features":\0HUGE\0,"ts":1.5}', "wrong_feature_length", None, draw(partition))
    )
    events.append(Rec("events", b"\0FIVE_MB\0", "wrong_feature_length", None, draw(partition)))

    labels: list[Rec] = []
    labelled = draw(st.lists(st.sampled_from(good_ids), unique=True, min_size=len(good_ids) // 2))
    labels += [Rec("labels", _dumps({"id": i, "label": draw(LABEL)}), None, i, draw(partition)) for i in labelled]
    duplicated = draw(st.lists(st.sampled_from(labelled), min_size=1, max_size=10))
    labels += [
        Rec("labels", _dumps({"id": i, "label": draw(LABEL), "again": True}), None, i, draw(partition))
        for i in duplicated
    ]
    unknown = [f"u{n}-{draw(ID_TEXT)}" for n in range(draw(st.integers(1, 10)))]
    unknown += draw(st.lists(st.sampled_from(bad_ids), min_size=1, max_size=3))
    labels += [Rec("labels", _dumps({"id": i, "label": draw(LABEL)}), None, i, draw(partition)) for i in unknown]
    kinds = BAD_LABEL_KINDS + draw(st.lists(st.sampled_from(BAD_LABEL_KINDS), max_size=10))
    for kind in kinds:
        value, reason = draw(bad_label(kind, draw(st.sampled_from(good_ids))))
        labels.append(Rec("labels", value, reason, None, draw(partition), draw(HEADERS)))
    labels.append(
        Rec("labels", b'{"id":' + _dumps(good_ids[0]) + b',"label":\0HUGE\0}', "bad_label", None, draw(partition))
    )
    return draw(st.permutations(events)) + draw(st.permutations(labels))


# --- what the contract expects of them --------------------------------------------------------


def expected_counts(records: list[Rec]) -> dict[str, Any]:
    good_events = {r.id for r in records if r.topic == "events" and r.reason is None}
    good_labels = Counter(r.id for r in records if r.topic == "labels" and r.reason is None)
    joined = {i for i in good_labels if i in good_events}
    return {
        "events_consumed": sum(r.topic == "events" for r in records),
        "labels_consumed": sum(r.topic == "labels" for r in records),
        "events_predicted": len(good_events),
        "labels_joined": len(joined),
        "examples_trained": len(joined),
        "pending_events": len(good_events - joined),
        "early_labels": len(good_labels) - len(joined),
        "labels_duplicate": sum(good_labels.values()) - len(good_labels),
        "dead_lettered": sum(r.reason is not None for r in records),
    }


# --- the test ----------------------------------------------------------------------------------


async def produce(bootstrap: str, names: dict[str, str], records: list[Rec]) -> dict[tuple[str, int, int], Rec]:
    """Send every record (one producer, 5 MB allowed); returns them by (topic, partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024, linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(names[r.topic], r.value, key=r.key, partition=r.partition, headers=list(r.headers))
            for r in records
        ]
        done = await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return {(m.topic, m.partition, m.offset): r for m, r in zip(done, records, strict=True)}


FUZZ = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,  # the same three streams on every run: a CI failure reproduces locally
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs a service run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(records=streams())
async def test_fuzzed_records_are_dead_lettered_or_predicted_and_trained_exactly(
    records: list[Rec], kafka_broker: BrokerInfo, start_service: StartService, tmp_path: Path, kafka_client: str
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    run = uuid.uuid4().hex[:8]
    names = {t: f"fuzz-{run}.{t}" for t in ("events", "labels", "predictions", "dlq")}
    await ensure_topics(bootstrap, {n: TOPIC_PARTITIONS for n in names.values()})
    checkpoints = tmp_path / f"checkpoints-{run}"
    service = start_service(
        events_topic=names["events"],
        labels_topic=names["labels"],
        predictions_topic=names["predictions"],
        dead_letter_topic=names["dlq"],
        group_id=f"fuzz-{run}",
        checkpoint_dir=checkpoints,
        log_interval_s=0.2,
        session_timeout_ms=6000,  # a quicker group join on the embedded broker
        loss_spike_factor=1e9,  # the training guardrail is not under test: every joined label trains
    )
    sent = await produce(bootstrap, names, records)
    want = expected_counts(records)

    await wait_for_progress(
        service,
        lambda p: p["events_consumed"] == want["events_consumed"] and p["labels_consumed"] == want["labels_consumed"],
        "every record read",
    )
    assert service.alive()
    assert service.stop() == 0, service.log_tail()

    # Dead letters: exactly the bad records, unchanged, each with its reason and source.
    check_dead_letters(await read_to_end(bootstrap, names["dlq"]), sent, want, kafka_client)

    # Predictions: every good event exactly once (no crash), keyed by its id.
    check_predictions(await read_to_end(bootstrap, names["predictions"]), records)

    # The final checkpoint: counts exactly as the contract says.
    check_final_checkpoint(checkpoints, records, want)


def check_dead_letters(
    dead: list[Any], sent: dict[tuple[str, int, int], Rec], want: dict[str, Any], kafka_client: str
) -> None:
    """Exactly the bad records, unchanged, each with its reason and source.

    Except on librdkafka, which ends a header key at its first NUL character (its C API takes
    keys as C strings): there the service writes a NUL in a key escaped, as ``\\x00``.
    """
    assert len(dead) == want["dead_lettered"], Counter(dict(r.headers)["dlq.reason"] for r in dead)
    for record in dead:
        headers = dict(record.headers)
        source = (
            headers["dlq.source.topic"].decode(),
            int(headers["dlq.source.partition"]),
            int(headers["dlq.source.offset"]),
        )
        original = sent[source]
        assert original.reason is not None, f"a good record was dead-lettered: {source} {headers['dlq.reason']!r}"
        assert headers["dlq.reason"].decode() == original.reason, (
            source,
            original.value[:200] if original.value else None,
        )
        assert record.value == original.value and record.key == original.key and headers["dlq.detail"]
        expected = list(original.headers)
        if kafka_client == "librdkafka":
            expected = [(key.replace("\x00", "\\x00"), value) for key, value in expected]
        assert list(record.headers)[: len(original.headers)] == expected


def check_predictions(predictions: list[Any], records: list[Rec]) -> None:
    """Every good event exactly once (no crash), keyed by its id."""
    assert all(orjson.loads(p.value)["id"].encode() == p.key for p in predictions)
    assert Counter(p.key.decode() for p in predictions) == Counter(
        r.id for r in records if r.topic == "events" and r.reason is None
    )


def check_final_checkpoint(checkpoints: Path, records: list[Rec], want: dict[str, Any]) -> None:
    """The final checkpoint's counts are exactly what the contract says of ``records``."""
    shown = checkpoint_show(checkpoints)
    loaded = CheckpointStore(checkpoints, keep=1).load_latest()
    assert loaded is not None
    join_counters = loaded.state["join"]["counters"]
    got = {**{k: shown[k] for k in want if k in shown}, "labels_duplicate": join_counters["labels_duplicate"]}
    reasons = Counter(r.reason for r in records if r.reason is not None)
    print(f"fuzz example: {len(records)} records, {dict(sorted(reasons.items()))}, {want}")
    assert got == want
    assert {
        k.split(".", 1)[1]: v for k, v in loaded.state["counters"].items() if k.startswith("dead_lettered.")
    } == reasons
    assert shown["skipped_steps"] == 0 and join_counters["labels_expired"] == join_counters["events_expired"] == 0
