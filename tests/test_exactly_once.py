"""DELIVERY=exactly_once: predictions, dead letters and offsets in one transaction per checkpoint.

What a read_committed consumer sees is worked out from the transaction markers in the log
(:mod:`.transaction_markers`), since the embedded Tansu broker writes the markers but hands
aborted records to read_committed consumers anyway; where the broker filters them (Apache
Kafka), its own read_committed consumer must agree.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError
from stream_learner.kafka.clients import make_consumer
from stream_learner.kafka.librdkafka.config import consumer_properties, producer_properties
from stream_learner.tools.synthetic import DriftingStream
from stream_learner.checkpointing.transactions import choose_checkpoint

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .service_process import ServiceProcess, checkpoint_show
from .librdkafka_io import Producer, produce, read_to_end
from .transaction_markers import read_committed_view
from .stream_io import produce_events, produce_labels
from .test_crash_safety import CHECKPOINT_STEPS, wait_for_exit, wait_until_joined
from .test_field_faults import hides_aborted



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
    settings = _settings(delivery="exactly_once", kafka_client="librdkafka", group_id="fraud")
    assert settings.effective_transactional_id == "stream-learner.fraud"
    pod = _settings(delivery="exactly_once", kafka_client="librdkafka", transactional_id="pod-0")
    assert pod.effective_transactional_id == "pod-0"
    assert producer_properties(settings)["transactional.id"] == "stream-learner.fraud"
    assert "transactional.id" not in producer_properties(_settings(kafka_client="librdkafka"))
    # read_committed either way: upstream producers may be transactional, and what they abort is not served.
    assert consumer_properties(settings)["isolation.level"] == "read_committed"
    consumer = make_consumer(_settings())
    assert consumer._isolation_level == "read_committed"
    await consumer.stop()


def test_exactly_once_needs_librdkafka_and_a_previous_checkpoint_to_fall_back_to() -> None:
    with pytest.raises(ValidationError, match="keep_checkpoints >= 2"):
        _settings(delivery="exactly_once", kafka_client="librdkafka", keep_checkpoints=1)
    with pytest.raises(ValidationError, match="needs kafka_client=librdkafka: aiokafka's transactional producer"):
        _settings(delivery="exactly_once")


# --- Against the broker --------------------------------------------------------------------------

FAST = {"delivery": "exactly_once", "kafka_client": "librdkafka", "checkpoint_interval_s": 0.2, "session_timeout_ms": 6000}


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


async def _crash_at_every_step(bootstrap: str, topics: TestTopics, start_service: StartService) -> list[ServiceProcess]:
    """Kill -9 at every checkpoint step (the transaction's commit is step 5) and once at random; then a
    clean run to the end. Returns the crashed runs."""
    crashed = []
    for crash in [*CHECKPOINT_STEPS, "random"]:
        service = start_service(**FAST, fetch_max_records=100, **({} if crash == "random" else {"crash_at": crash}))
        if crash == "random":
            await asyncio.to_thread(service.wait_for_log, "checkpoint_written", 60)
            await asyncio.sleep(random.Random(21).uniform(0.1, 1.0))
            service.kill()
        assert await _exit_code(service, 60) in (137, -9), service.log_tail()  # exited at the step, or killed
        crashed.append(service)
    return crashed


async def _crashed_then_run_to_the_end(
    bootstrap: str, topics: TestTopics, start_service: StartService, total: int
) -> tuple[list[ServiceProcess], ServiceProcess]:
    """``total`` events and labels, :func:`_crash_at_every_step`, then a clean run: every label trained once."""
    await _prefill(bootstrap, topics, total)
    crashed = await _crash_at_every_step(bootstrap, topics, start_service)
    service = start_service(**FAST)
    await wait_until_joined(service, total)
    assert service.stop() == 0
    shown = checkpoint_show(Path(service.env["STREAM_LEARNER_CHECKPOINT_DIR"]))
    assert shown["examples_trained"] == shown["labels_joined"] == total, shown
    return crashed, service


@pytest.mark.integration
async def test_the_marker_reader_sees_what_read_committed_must(kafka_broker: BrokerInfo, topics: TestTopics) -> None:
    """The checker the kill tests rest on, against confluent-kafka's transactions: committed, aborted, plain."""
    bootstrap = kafka_broker.bootstrap_servers
    producer = Producer(bootstrap, transactional_id=f"{topics.events}-markers")
    producer.init_transactions()
    producer.send_in_transactions(topics.events, [(b"k", b"c1"), (b"k", b"c2")], every=2)
    producer.send_aborted({topics.events: [(b"k", b"a1"), (b"k", b"a2"), (b"k", b"a3")]})
    producer.send_in_transactions(topics.events, [(b"k", b"c3")], every=1)
    produce(bootstrap, {topics.events: [(b"k", b"p1")]})
    view = await read_committed_view(bootstrap, topics.events)
    assert sorted(view.values) == [b"c1", b"c2", b"c3", b"p1"] and view.aborted == 3
    producer.producer.begin_transaction()
    producer.send(topics.events, [(b"k", b"o1")])
    producer.flush()
    with pytest.raises(AssertionError, match="transactions left open"):
        await read_committed_view(bootstrap, topics.events)
    producer.producer.abort_transaction(10)


@pytest.mark.integration
async def test_kill_9_at_every_checkpoint_step_leaves_each_prediction_committed_exactly_once(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, total = kafka_broker.bootstrap_servers, 6000
    crashed, service = await _crashed_then_run_to_the_end(bootstrap, topics, start_service, total)
    # Killed between writing a checkpoint and committing its transaction, the next start fell back a checkpoint.
    restarts = [s.log_events() for s in [*crashed[1:], service]]
    assert any(e.get("event") == "checkpoint_not_committed" for events in restarts for e in events), "no fallback seen"

    predictions = await read_committed_view(bootstrap, topics.predictions)
    committed = Counter(orjson.loads(value)["id"] for value in predictions.values)
    assert len(committed) == total and set(committed.values()) == {1}, "each event's prediction committed exactly once"
    assert predictions.aborted > 0, "the crashes must have aborted some predictions"
    assert len((await read_committed_view(bootstrap, topics.dead_letter)).values) == 1, "the bad record is dead-lettered once"
    if hides_aborted(bootstrap, topics):  # Apache Kafka: its own read_committed consumers agree
        assert ids_read(bootstrap, topics.predictions, "read_committed") == committed


def ids_read(bootstrap: str, topic: str, isolation_level: str) -> Counter[str]:
    """How many predictions of each event id a librdkafka consumer at ``isolation_level`` reads."""
    return Counter(orjson.loads(m.value() or b"")["id"] for m in read_to_end(bootstrap, topic, isolation_level=isolation_level))


@pytest.mark.integration
async def test_a_second_instance_fences_the_first(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    total = 1000
    await _prefill(kafka_broker.bootstrap_servers, topics, total)
    first = start_service(**FAST)
    await asyncio.to_thread(first.wait_for_log, "partitions_assigned", 60)
    second = start_service(**FAST)
    assert await _exit_code(first, 60) != 0, "the fenced instance must fail, not go on producing"
    assert "fenced" in first.log_tail().lower(), first.log_tail()
    await wait_until_joined(second, total)
    assert second.stop() == 0
    predictions = await read_committed_view(kafka_broker.bootstrap_servers, topics.predictions)
    committed = Counter(orjson.loads(value)["id"] for value in predictions.values)
    assert len(committed) == total and set(committed.values()) == {1}, "each prediction committed exactly once"
