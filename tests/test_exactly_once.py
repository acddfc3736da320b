"""DELIVERY=exactly_once: predictions, dead letters and offsets in one transaction per checkpoint.

The checkpoint choice after a crash and the settings are tested everywhere. The service's
transactions need a broker with Kafka transactions: on the embedded Tansu broker the start
is refused with a clear error (tested), and the read_committed tests skip there.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError
from stream_learner.kafka.clients import make_consumer, make_producer
from stream_learner.tools.synthetic import DriftingStream
from stream_learner.checkpointing.transactions import choose_checkpoint

from .conftest import INPUT_DIM, TOPIC_PARTITIONS, BrokerInfo, StartService, TestTopics
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import produce_events, produce_labels, read_predictions
from .test_crash_safety import wait_for_exit, wait_until_joined

NO_TRANSACTIONS = "aiokafka's transactional producer and read_committed filtering of aborted records"


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, input_dim=INPUT_DIM, **overrides)  # type: ignore[call-arg]


def _write(store: CheckpointStore, offsets: dict[str, dict[int, int]]) -> None:
    store.write({"offsets": offsets})


def test_restart_takes_the_newest_checkpoint_whose_transaction_committed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    _write(store, {"events": {0: 10, 1: 12}, "labels": {0: 7}})
    _write(store, {"events": {0: 20, 1: 22}, "labels": {0: 17}})
    _write(store, {"events": {0: 30, 1: 32}, "labels": {0: 27}})  # crashed before its commit
    committed = {TopicPartition("events", 0): 20, TopicPartition("events", 1): 22, TopicPartition("labels", 0): 17}

    chosen = choose_checkpoint(store.load_all(), committed)

    assert chosen is not None and chosen.state["offsets"]["events"] == {0: 20, 1: 22}
    newest = choose_checkpoint(store.load_all(), {**committed, TopicPartition("events", 0): 30, TopicPartition("events", 1): 32, TopicPartition("labels", 0): 27})
    assert newest is not None and newest.checkpoint_id == 3


def test_nothing_committed_starts_fresh_even_with_checkpoints_on_disk(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    _write(store, {"events": {0: 10}})  # the first transaction never committed
    assert choose_checkpoint(store.load_all(), {}) is None


def test_committed_offsets_without_a_matching_checkpoint_refuse_the_start(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    _write(store, {"events": {0: 10}})
    with pytest.raises(CheckpointError, match=r"no checkpoint matches the group's committed offsets events\[0\]=99"):
        choose_checkpoint(store.load_all(), {TopicPartition("events", 0): 99})
    # A checkpoint lacking a committed partition is no cut of it either.
    with pytest.raises(CheckpointError):
        choose_checkpoint(store.load_all(), {TopicPartition("events", 0): 10, TopicPartition("labels", 0): 5})


def test_a_corrupt_newest_checkpoint_is_skipped_when_choosing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=5)
    _write(store, {"events": {0: 10}})
    _write(store, {"events": {0: 20}})
    store.paths()[0].write_bytes(b"truncated")
    chosen = choose_checkpoint(store.load_all(), {TopicPartition("events", 0): 10})
    assert chosen is not None and chosen.checkpoint_id == 1


async def test_exactly_once_settings_make_a_transactional_producer_and_every_consumer_reads_committed() -> None:
    settings = _settings(delivery="exactly_once", group_id="fraud")
    assert settings.effective_transactional_id == "stream-learner.fraud"
    assert _settings(delivery="exactly_once", transactional_id="pod-0").effective_transactional_id == "pod-0"
    producer, consumer = make_producer(settings), make_consumer(settings)
    plain_producer, plain_consumer = make_producer(_settings()), make_consumer(_settings())
    try:
        assert producer._txn_manager is not None and producer._txn_manager.transactional_id == "stream-learner.fraud"
        assert consumer._isolation_level == "read_committed"
        # read_committed either way: upstream producers may be transactional, and what they abort is not served.
        assert plain_producer._txn_manager is None and plain_consumer._isolation_level == "read_committed"
    finally:
        for client in (producer, consumer, plain_producer, plain_consumer):
            await client.stop()


def test_exactly_once_needs_a_previous_checkpoint_to_fall_back_to() -> None:
    with pytest.raises(ValidationError, match="keep_checkpoints >= 2"):
        _settings(delivery="exactly_once", keep_checkpoints=1)


@pytest.mark.integration
def test_exactly_once_on_a_broker_without_transactions_stops_with_a_clear_error(
    kafka_broker: BrokerInfo, start_service: StartService, tmp_path: Path
) -> None:
    if kafka_broker.kind != "tansu":
        pytest.skip("this broker has transactions; the refusal is only seen on the embedded Tansu broker")
    service = start_service(delivery="exactly_once")
    assert service.proc is not None
    code = service.proc.wait(60)
    assert code == 2, service.log_tail()
    log = service.log_tail()
    assert "BrokerCapabilityError" in log and "delivery=exactly_once" in log and "at_least_once" in log
    assert CheckpointStore(tmp_path / "checkpoints", keep=3).paths() == []


# --- On a real Kafka --------------------------------------------------------------------------

FAST = {"delivery": "exactly_once", "checkpoint_interval_s": 0.2, "session_timeout_ms": 6000}


async def _prefill(bootstrap: str, topics: TestTopics, total: int) -> None:
    stream = DriftingStream(INPUT_DIM, seed=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, total, 250):
            batch = stream.batch(start, 250)
            await produce_events(producer, topics.events, batch)
            await produce_labels(producer, topics.labels, batch.ids, batch.labels)
        await producer.send_and_wait(topics.events, b"{not json", key=b"bad")
    finally:
        await producer.stop()


async def _exit_code(service: ServiceProcess, timeout: float) -> int:
    await wait_for_exit(service, timeout)
    assert service.proc is not None
    return service.proc.wait()


@pytest.mark.integration
@pytest.mark.kafka_only(NO_TRANSACTIONS)
@pytest.mark.usefixtures("require_real_kafka")
async def test_read_committed_consumer_sees_each_prediction_once_across_crashes(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    total = 6000
    await _prefill(kafka_broker.bootstrap_servers, topics, total)
    # Between the checkpoint file and the transaction's commit, right after the commit, mid-drain.
    for crash in ("written:2", "committed:2", "drained:2", "written:1"):
        service = start_service(**FAST, fetch_max_records=100, crash_at=crash)
        assert await _exit_code(service, 60) == 137, service.log_tail()
    service = start_service(**FAST)
    await wait_until_joined(service, total)
    assert service.stop() == 0

    shown = checkpoint_show(tmp_path / "checkpoints")
    assert shown["examples_trained"] == shown["labels_joined"] == total, shown
    committed = await read_predictions(
        kafka_broker.bootstrap_servers, topics.predictions, expected=total, timeout=30, isolation_level="read_committed"
    )
    assert len(committed) == total and all(len(p) == 1 for p in committed.values()), "each prediction exactly once"
    everything = await read_predictions(kafka_broker.bootstrap_servers, topics.predictions, expected=2 * total, timeout=10)
    assert sum(len(p) for p in everything.values()) > total, "the crashes must have aborted some predictions"
    dead_letters = [TopicPartition(topics.dead_letter, p) for p in range(TOPIC_PARTITIONS)]
    assert await _count_committed(kafka_broker.bootstrap_servers, dead_letters) == 1, (
        "the bad record is dead-lettered once for read_committed readers"
    )


async def _count_committed(bootstrap: str, partitions: list[TopicPartition]) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = await consumer.getmany(*partitions, timeout_ms=3000)
        return sum(len(r) for r in records.values())
    finally:
        await consumer.stop()


@pytest.mark.integration
@pytest.mark.kafka_only(NO_TRANSACTIONS)
@pytest.mark.usefixtures("require_real_kafka")
async def test_a_second_instance_fences_the_first(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    total = 1000
    await _prefill(kafka_broker.bootstrap_servers, topics, total)
    first = start_service(**FAST)
    await asyncio.to_thread(first.wait_for_log, "partitions_assigned", 60)
    second = start_service(**FAST)
    assert await _exit_code(first, 60) != 0, "the fenced instance must fail, not go on producing"
    assert "ProducerFenced" in first.log_tail() or "fenced" in first.log_tail().lower(), first.log_tail()
    await wait_until_joined(second, total)
    assert second.stop() == 0
    committed = await read_predictions(
        kafka_broker.bootstrap_servers, topics.predictions, expected=total, timeout=30, isolation_level="read_committed"
    )
    assert len(committed) == total and all(len(p) == 1 for p in committed.values())
