"""stream_learner.client: EventProducer refuses what the service would dead-letter and sends what it decodes;
PredictionConsumer reads the service's predictions as typed values (against the real test broker)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from stream_learner.config import Settings
from stream_learner.errors import DeliveryError
from stream_learner.intake.events import decode_events
from stream_learner.intake.labels import decode_labels
from stream_learner.kafka.predictions import encode_predictions
from stream_learner.records import EventBatch, Predictions, RawRecord
from stream_learner.tools.client import EventProducer, Prediction, PredictionConsumer
from stream_learner.tools.predictions import _parse
from stream_learner.tools.synthetic import DriftingStream

from .conftest import BrokerInfo, TestTopics
from .stream_io import read_topic

DIM = 4


class FakeProducer:
    """Records what is sent; ``fail`` makes deliveries fail."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.fail:  # later, as a broker's answer comes
            loop.call_soon(future.set_exception, ConnectionError("broker gone"))
        else:
            future.set_result(None)
        return future

    async def flush(self) -> None:
        pass

    def records(self, topic: str) -> list[RawRecord]:
        return [RawRecord(topic, 0, i, key, value) for i, (t, value, key) in enumerate(self.sent) if t == topic]


def raw(topic: str, key: bytes | None, value: bytes | None, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, 0, 0, ())


async def test_sent_events_and_labels_decode_to_exactly_what_was_given() -> None:
    fake = FakeProducer()
    producer = EventProducer(producer=fake, input_dim=DIM, num_classes=3)  # type: ignore[arg-type]
    features = np.array([[0.1, -2.5, 1e-8, 3.4028234e38], [1, 2, 3, 4]], dtype=np.float32)
    await producer.send_event("a", features[0], ts=1700000000.25)
    await producer.send_event("b", [1, 2, 3.0, 4])
    await producer.send_events(["c", "d"], features.astype(np.float64), ts=[1.5, 2.5])
    await producer.send_label("a", 2)
    await producer.send_labels(["b", "c"], np.array([0, 1]))
    await producer.flush()

    events, rejected = decode_events(fake.records("events"), DIM, now=0.0)
    assert rejected == [] and events.ids == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(events.features, np.concatenate([features, features]))
    assert events.ts[0] == 1700000000.25 and math.isnan(events.ts[1]) and list(events.ts[2:]) == [1.5, 2.5]
    labels, rejected = decode_labels(fake.records("labels"), "classification", 3)
    assert rejected == [] and labels.ids == ["a", "b", "c"] and list(labels.labels) == [2, 0, 1]
    assert all(key == orjson.loads(value)["id"].encode() for _, value, key in fake.sent), "key = event id"
    assert orjson.loads(fake.sent[1][1]) == {"id": "b", "features": [1.0, 2.0, 3.0, 4.0]}, "no ts unless given"


BAD_FEATURES = [
    ([1.0, 2.0, 3.0], "input_dim=4"),
    ([1.0, 2.0, 3.0, float("nan")], "finite"),
    ([1.0, 2.0, 3.0, float("inf")], "finite"),
    ([1.0, 2.0, 3.0, 1e39], "finite float32"),
    ([1.0, 2.0, 3.0, True], "only numbers"),
    ([1.0, 2.0, 3.0, "4"], "only numbers"),
    ("1234", "sequence of numbers"),
    (np.array(["1", "2", "3", "4"]), "numbers"),
    (np.zeros((2, 4)), "shape"),
]


@pytest.mark.parametrize(("features", "message"), BAD_FEATURES)
async def test_bad_events_raise_value_error_and_send_nothing(features: Any, message: str) -> None:
    fake = FakeProducer()
    producer = EventProducer(producer=fake, input_dim=DIM)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        await producer.send_event("e-1", features)
    with pytest.raises(ValueError):
        await producer.send_events(["ok", "bad"], [[0.0] * DIM, features])
    assert fake.sent == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.send_event("", [0.0] * DIM), "non-empty string"),
        (lambda p: p.send_event(7, [0.0] * DIM), "non-empty string"),
        (lambda p: p.send_event("e", [0.0] * DIM, ts=float("nan")), "ts must be"),
        (lambda p: p.send_event("e", [0.0] * DIM, ts=True), "ts must be"),
        (lambda p: p.send_events(["a", "b"], np.zeros((3, DIM))), "2 rows"),
        (lambda p: p.send_events(["a", "b"], np.zeros((2, DIM)), ts=[1.0]), "2 ids but 1 ts"),
        (lambda p: p.send_label("e", 1.5), "non-negative integer"),
        (lambda p: p.send_label("e", -1), "non-negative integer"),
        (lambda p: p.send_label("e", 2), r"outside \[0, 2\)"),
        (lambda p: p.send_label("e", True), "finite number"),
        (lambda p: p.send_label("e", float("inf")), "finite number"),
        (lambda p: p.send_label("e", "1"), "finite number"),
        (lambda p: p.send_labels(["a", "b"], [0]), "2 ids but 1 labels"),
        (lambda p: p.send_labels(["a", ""], [0, 1]), "non-empty string"),
    ],
)
async def test_bad_ids_times_and_labels_raise_value_error(call: Any, message: str) -> None:
    fake = FakeProducer()
    producer = EventProducer(producer=fake, input_dim=DIM, num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        await call(producer)
    assert fake.sent == []


async def test_regression_labels_are_any_finite_number() -> None:
    fake = FakeProducer()
    producer = EventProducer(producer=fake, task="regression")  # type: ignore[arg-type]
    await producer.send_label("e", -1.25)
    labels, rejected = decode_labels(fake.records("labels"), "regression", 2)
    assert rejected == [] and list(labels.labels) == [-1.25]


async def test_a_failed_delivery_is_raised_by_the_next_send_and_by_flush() -> None:
    producer = EventProducer(producer=FakeProducer(fail=True), input_dim=DIM)  # type: ignore[arg-type]
    delivery = await producer.send_event("a", [0.0] * DIM)
    with pytest.raises(ConnectionError):
        await delivery
    with pytest.raises(DeliveryError, match="1 sent record"):
        await producer.send_event("b", [0.0] * DIM)
    many = await producer.send_events(["c", "d"], np.zeros((2, DIM)))
    with pytest.raises(DeliveryError, match="2 sent record"):
        await producer.flush()
    with pytest.raises(ConnectionError):
        await many


def test_prediction_parsing_follows_the_contract() -> None:
    p = Prediction.from_json(b'{"id": "e-1", "prediction": 1, "scores": [0.2, 0.8], "model_version": 42, "ts": 1.5}')
    assert p == Prediction("e-1", 1, (0.2, 0.8), 42, 1.5)
    assert p.to_dict() == {"id": "e-1", "prediction": 1, "scores": [0.2, 0.8], "model_version": 42, "ts": 1.5}
    r = Prediction.from_json(b'{"id": "e-2", "prediction": -0.5, "model_version": 0}')
    assert r.scores is None and r.ts is None and r.to_dict() == {"id": "e-2", "prediction": -0.5, "model_version": 0}
    for bad in (b"[]", b"{", b'{"id": "x"}', b'{"id": "", "prediction": 1, "model_version": 0}',
                b'{"id": "x", "prediction": "1", "model_version": 0}', b'{"id": "x", "prediction": 1, "model_version": -1}'):
        with pytest.raises(ValueError):
            Prediction.from_json(bad)
    with pytest.raises(ValueError, match="key b'other' is not the prediction's id"):
        _parse(raw("p", b"other", b'{"id": "e-1", "prediction": 1, "model_version": 0}'))
    with pytest.raises(ValueError, match=r"p\[0\]@3: a prediction record has no value"):
        _parse(raw("p", b"e-1", None, offset=3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.id = "x"  # type: ignore[misc]


def test_either_brokers_or_a_producer() -> None:
    with pytest.raises(ValueError, match="either"):
        EventProducer()
    with pytest.raises(ValueError, match="task"):
        EventProducer(producer=FakeProducer(), task="ranking")  # type: ignore[arg-type]


async def test_from_settings_takes_the_service_brokers_topics_shapes_and_security() -> None:
    s = Settings(
        bootstrap_servers="broker:9093", input_dim=DIM, num_classes=3, events_topic="ev", labels_topic="lb", predictions_topic="pr",
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice", sasl_password="secret-pw",
    )
    events, predictions = EventProducer.from_settings(s), PredictionConsumer.from_settings(s)
    assert (events.events_topic, events.labels_topic, events.input_dim, events.num_classes) == ("ev", "lb", DIM, 3)
    assert predictions.topic == "pr"
    for client in (events._producer.client, predictions._consumer._client):
        assert client._bootstrap_servers == "broker:9093" and client._security_protocol == "SASL_PLAINTEXT"
        assert (client._sasl_mechanism, client._sasl_plain_username, client._sasl_plain_password) == ("SCRAM-SHA-512", "alice", "secret-pw")
    await events.stop()  # never started: just closed
    await predictions.stop()


@pytest.mark.integration
async def test_events_and_labels_reach_the_broker_co_partitioned(kafka_broker: BrokerInfo, topics: TestTopics) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    batch = DriftingStream(DIM).batch(0, 200)
    async with EventProducer(bootstrap, events_topic=topics.events, labels_topic=topics.labels, input_dim=DIM, num_classes=2) as producer:
        delivered = await (await producer.send_events(batch.ids, batch.features, ts=1700000000.5))
        await producer.send_labels(batch.ids, batch.labels)
    assert len(delivered) == 200 and all(m.topic == topics.events for m in delivered)
    events = await read_topic(bootstrap, topics.events, until_count=200, timeout=30)
    labels = await read_topic(bootstrap, topics.labels, until_count=200, timeout=30)
    decoded, rejected = decode_events([RawRecord(r.topic, r.partition, r.offset, r.key, r.value) for r in events], DIM, 0.0)
    assert rejected == [] and sorted(decoded.ids) == sorted(batch.ids)
    by_id = dict(zip(decoded.ids, decoded.features))
    np.testing.assert_array_equal(np.stack([by_id[i] for i in batch.ids]), batch.features)
    event_partition = {r.key: r.partition for r in events}
    assert len(set(event_partition.values())) > 1, "ids must spread over partitions"
    assert all(event_partition[r.key] == r.partition for r in labels), "an event and its label share a partition number"


@pytest.mark.integration
@pytest.mark.parametrize("group_id", [None, "readers"])
async def test_prediction_consumer_reads_the_service_encoding(kafka_broker: BrokerInfo, topics: TestTopics, group_id: str | None) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    n = 50
    scores = np.random.default_rng(0).dirichlet([1.0, 1.0, 1.0], n).astype(np.float32)
    ts = np.where(np.arange(n) % 2 == 0, 1700000000.5, np.nan)
    events = EventBatch([f"e-{i}" for i in range(n)], np.zeros((n, DIM), np.float32), ts, np.zeros(n))
    values = encode_predictions(Predictions(events, scores, 7), "classification")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topics.predictions, v, key=i.encode()) for i, v in zip(events.ids, values)])
    finally:
        await producer.stop()

    received: list[Prediction] = []
    consumer = PredictionConsumer(bootstrap, topic=topics.predictions, group_id=group_id and f"{group_id}-{topics.events}")
    async with consumer:
        async def take() -> None:
            async for prediction in consumer:
                received.append(prediction)
                if len(received) == n:
                    return
        await asyncio.wait_for(take(), timeout=60)
    by_id = {p.id: p for p in received}
    assert len(by_id) == n
    for i, event_id in enumerate(events.ids):
        p = by_id[event_id]
        assert isinstance(p, Prediction) and p.model_version == 7
        assert p.prediction == int(scores[i].argmax()) and isinstance(p.prediction, int)
        assert p.scores is not None and np.allclose(p.scores, scores[i], atol=1e-6)
        assert p.ts == (1700000000.5 if i % 2 == 0 else None)


@pytest.mark.integration
async def test_the_produce_command_sends_the_drifting_stream(kafka_broker: BrokerInfo, topics: TestTopics) -> None:
    """``stream-learner produce`` (the compose stack's producer): contract events, their labels later, a clean stop."""
    from .test_cli import cli

    bootstrap = kafka_broker.bootstrap_servers
    args = ["produce", "--bootstrap-servers", bootstrap, "--events-topic", topics.events, "--labels-topic", topics.labels,
            "--input-dim", str(DIM), "--rate", "200", "--label-delay", "0.5", "--duration", "3", "--report-every", "1"]
    result = await asyncio.to_thread(cli, *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    done = result.stdout.strip().splitlines()[-1]
    assert done.startswith("done: ") and "acknowledged" in done, result.stdout
    sent_events, sent_labels = (int(word) for word in done.split() if word.isdigit())
    assert 400 <= sent_events <= 800 and 0 < sent_labels < sent_events

    events = await read_topic(bootstrap, topics.events, until_count=sent_events, timeout=30)
    labels = await read_topic(bootstrap, topics.labels, until_count=sent_labels, timeout=30)
    decoded, rejected = decode_events([RawRecord(r.topic, r.partition, r.offset, r.key, r.value) for r in events], DIM, 0.0)
    assert rejected == [] and len(decoded) == sent_events and not np.isnan(decoded.ts).any()
    assert sorted(decoded.ids, key=lambda i: int(i.split("-")[1])) == [f"e-{i}" for i in range(sent_events)]
    joined, rejected = decode_labels([RawRecord(r.topic, r.partition, r.offset, r.key, r.value) for r in labels], "classification", 2)
    assert rejected == [] and len(joined) == sent_labels and set(joined.ids) <= set(decoded.ids)
    stream, by_id = DriftingStream(DIM), dict(zip(decoded.ids, decoded.features))
    z = (np.stack([by_id[i] for i in joined.ids]) - stream.offset) / stream.scale
    agree = ((z @ stream.concepts[0] > 0) == (joined.labels == 1)).mean()
    assert agree > 0.9, f"labels must be their events' (before the drift, 2% noise): {agree:.1%} agree"
