"""Bad records go to the dead-letter topic unchanged, with the reason and source; good ones flow on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .service_process import checkpoint_show
from .stream_io import read_predictions, read_topic

pytestmark = pytest.mark.integration

GOOD = [0.5] * INPUT_DIM
BAD_EVENTS = {
    b"not json": "invalid_json",
    b"[1, 2]": "not_an_object",
    orjson.dumps({"features": GOOD}): "missing_id",
    orjson.dumps({"id": "x-len", "features": [1.0, 2.0]}): "wrong_feature_length",
    orjson.dumps({"id": "x-str", "features": ["a"] * INPUT_DIM}): "bad_features",
    orjson.dumps({"id": "x-big", "features": [1e39] * INPUT_DIM}): "non_finite_features",
    b'{"id": "x-nan", "features": [NaN, 1, 2, 3, 4, 5, 6, 7]}': "invalid_json",
}
BAD_LABELS = {
    orjson.dumps({"id": "g-1", "label": 7}): "label_out_of_range",
    orjson.dumps({"id": "g-2", "label": "yes"}): "bad_label",
    orjson.dumps({"id": "g-3"}): "missing_label",
}


@pytest.mark.both_clients
async def test_bad_records_are_dead_lettered_and_good_ones_predicted_and_trained(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: object
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    service = start_service()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sends = []
        for i, bad in enumerate(BAD_EVENTS):
            good_id = f"g-{i}"
            good = orjson.dumps({"id": good_id, "features": GOOD})
            sends.append(await producer.send(topics.events, good, key=good_id.encode(), partition=0))
            sends.append(await producer.send(topics.events, bad, key=b"bad", partition=0, headers=[("trace", b"t-1")]))
        for bad in BAD_LABELS:
            sends.append(await producer.send(topics.labels, bad, key=b"bad", partition=1))
        for i in range(len(BAD_EVENTS)):
            label = orjson.dumps({"id": f"g-{i}", "label": i % 2})
            sends.append(await producer.send(topics.labels, label, key=f"g-{i}".encode(), partition=1))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    expected_bad = len(BAD_EVENTS) + len(BAD_LABELS)
    dead = await read_topic(bootstrap, topics.dead_letter, until_count=expected_bad, timeout=60)
    predictions = await read_predictions(bootstrap, topics.predictions, expected=len(BAD_EVENTS), timeout=60)
    assert service.alive()
    assert sorted(predictions) == sorted(f"g-{i}" for i in range(len(BAD_EVENTS)))

    assert len(dead) == expected_bad
    by_value = {r.value: r for r in dead}
    for value, reason in {**BAD_EVENTS, **BAD_LABELS}.items():
        headers = dict(by_value[value].headers)
        assert headers["dlq.reason"] == reason.encode(), value
        assert headers["dlq.source.topic"] in (topics.events.encode(), topics.labels.encode())
        assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.detail"]
    events_dead = [r for r in dead if dict(r.headers)["dlq.source.topic"] == topics.events.encode()]
    assert all(dict(r.headers)["trace"] == b"t-1" and r.key == b"bad" for r in events_dead)
    assert sorted(int(dict(r.headers)["dlq.source.offset"]) for r in events_dead) == list(range(1, 2 * len(BAD_EVENTS), 2))

    assert service.stop() == 0
    shown = checkpoint_show(tmp_path / "checkpoints")  # type: ignore[operator]
    assert shown["dead_lettered"] == expected_bad
    assert shown["labels_joined"] == shown["examples_trained"] == len(BAD_EVENTS)
    assert shown["offsets"][topics.events]["0"] == 2 * len(BAD_EVENTS)
