"""A frozen broker and a rebalance: no label lost or trained twice, the service catches up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_learner.config import Settings
from stream_learner.errors import DeliveryError
from stream_learner.service import Service

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics

from .conftest import INPUT_DIM, TOPIC_PARTITIONS, BrokerInfo, StartService, TestTopics
from .librdkafka_io import read_predictions as read_to_end_by_id
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import read_predictions
from .test_crash_safety import FAST, PacedStream, wait_until_joined

pytestmark = pytest.mark.integration


def logged(service: ServiceProcess, event: str) -> list[dict]:
    return [e for e in service.log_events() if e.get("event") == event]


def freezable(kafka_broker: BrokerInfo) -> EmbeddedBroker:
    """The broker process, to freeze with SIGSTOP; the test is skipped where the run uses an external Kafka."""
    if kafka_broker.embedded is None:
        pytest.skip("freezing the broker (SIGSTOP) needs the embedded broker process; this run uses an external Kafka")
    return kafka_broker.embedded


async def finish_and_check(service: ServiceProcess, kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path, total: int) -> None:
    await wait_until_joined(service, total, timeout=120)
    assert service.stop() == 0
    shown = checkpoint_show(tmp_path / "checkpoints")
    assert shown["labels_joined"] == shown["examples_trained"] == total, shown
    assert shown["events_predicted"] == total
    predictions = await asyncio.to_thread(read_to_end_by_id, kafka_broker.bootstrap_servers, topics.predictions)
    assert len(predictions) == total


@pytest.mark.both_clients
async def test_a_frozen_broker_neither_crashes_the_service_nor_loses_labels(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    broker = freezable(kafka_broker)
    total = 3000
    service = start_service(**FAST)
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    producing = asyncio.create_task(PacedStream(kafka_broker.bootstrap_servers, topics, total, rate=300, label_lag=100).run())
    await asyncio.sleep(3)
    broker.pause()
    try:
        await asyncio.sleep(10)  # longer than the 6 s session timeout
        assert service.alive(), service.log_tail()
        assert logged(service, "broker_unreachable"), "the service must notice it cannot reach the broker"
    finally:
        broker.resume()
    await producing
    await finish_and_check(service, kafka_broker, topics, tmp_path, total)
    assert logged(service, "broker_reachable"), "and notice when it can again"


@pytest.mark.both_clients
async def test_a_second_member_joining_and_leaving_loses_and_repeats_no_label(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    total = 3000
    service = start_service(**FAST)
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    producing = asyncio.create_task(PacedStream(kafka_broker.bootstrap_servers, topics, total, rate=400, label_lag=100).run())
    await asyncio.sleep(2)
    intruder = AIOKafkaConsumer(
        topics.events, topics.labels, bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=f"group-{topics.events}", enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
    )
    await intruder.start()
    try:
        deadline = time.monotonic() + 30
        while not intruder.assignment() and time.monotonic() < deadline:
            await intruder.getmany(timeout_ms=200)
        assert intruder.assignment(), "the second member must get partitions"
        await asyncio.sleep(2)
        await intruder.getmany(timeout_ms=200)
    finally:
        await intruder.stop()
    await producing
    revoked = logged(service, "partitions_revoked")
    assert revoked, "the service must give partitions up"
    assert any(e.get("reason") == "revoked" for e in logged(service, "checkpoint_written")), "and checkpoint first"
    await finish_and_check(service, kafka_broker, topics, tmp_path, total)


async def test_a_checkpoint_failing_on_revoke_fails_the_service_instead_of_being_swallowed(
    kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path
) -> None:
    # aiokafka logs and swallows errors raised in rebalance listeners; the service must not go on as if nothing happened.
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, bootstrap_servers=kafka_broker.bootstrap_servers, events_topic=topics.events, labels_topic=topics.labels,
        predictions_topic=topics.predictions, dead_letter_topic=topics.dead_letter, group_id=f"group-{topics.events}",
        input_dim=INPUT_DIM, checkpoint_dir=tmp_path / "checkpoints", metrics_port=0, session_timeout_ms=6000,
    )  # fmt: skip
    service = Service(settings)
    commit = service.checkpoint.commit

    async def failing_on_revoke(reason: str, *, wait: bool = True) -> bool:
        if reason == "revoked":
            raise DeliveryError("injected: a prediction was not acknowledged")
        return await commit(reason, wait=wait)

    service.checkpoint.commit = failing_on_revoke  # type: ignore[method-assign]
    running = asyncio.create_task(service.run())
    await PacedStream(kafka_broker.bootstrap_servers, topics, 200, rate=2000, label_lag=10).run()
    deadline = time.monotonic() + 30
    while not service.checkpoint.dirty and time.monotonic() < deadline:  # wait for something to checkpoint
        await asyncio.sleep(0.05)
    intruder = AIOKafkaConsumer(
        topics.events, bootstrap_servers=kafka_broker.bootstrap_servers, group_id=f"group-{topics.events}",
        enable_auto_commit=False, session_timeout_ms=6000,
    )  # fmt: skip
    await intruder.start()
    try:
        with pytest.raises(DeliveryError, match="injected"):
            await asyncio.wait_for(running, 60)
    finally:
        await intruder.stop()
        if not running.done():
            running.cancel()


@pytest.mark.both_clients
async def test_sigterm_while_the_broker_does_not_answer_ends_within_the_shutdown_timeout_and_loses_nothing(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path, kafka_client: str
) -> None:
    broker = freezable(kafka_broker)
    total = 1000
    service = start_service(**FAST, shutdown_timeout_s=3)
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    await PacedStream(kafka_broker.bootstrap_servers, topics, total, rate=2000, label_lag=50).run()
    await wait_until_joined(service, total, timeout=60)
    broker.pause()  # the broker holds its connections open and answers nothing
    try:
        started = time.monotonic()
        code = service.stop(timeout=30)
        took = time.monotonic() - started
    finally:
        broker.resume()
    assert took < 3 + 2 * 3 + 5, f"the stop took {took:.1f} s"  # the timeout, two client stops, slack
    if kafka_client == "aiokafka":  # its commit to the group waits for the broker, past the timeout
        assert code == 1 and "SHUTDOWN_TIMEOUT_S" in service.log_tail(80), service.log_tail()
    else:  # librdkafka sends the commit without waiting: the final checkpoint is written, its commit advisory
        assert code == 0 and logged(service, "checkpoint_written")[-1]["reason"] == "shutdown", service.log_tail()
    # The next start resumes from the last durable checkpoint: every label still trained once.
    service = start_service(**FAST)
    await finish_and_check(service, kafka_broker, topics, tmp_path, total)


async def created_by_metadata_request(bootstrap: str, topic: str) -> bool:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        producer.client.add_topic(topic)
        await producer.client.force_metadata_update()
        return bool(producer.client.cluster.partitions_for_topic(topic))
    finally:
        await producer.stop()


async def test_a_missing_output_topic_is_waited_for_before_anything_is_read(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    predictions = f"{topics.predictions}.late"
    if await created_by_metadata_request(kafka_broker.bootstrap_servers, f"{topics.predictions}.probe"):
        pytest.skip("this broker creates a topic when a client asks for its metadata: no output topic is ever missing")
    service = start_service(**FAST, predictions_topic=predictions)
    await asyncio.to_thread(service.wait_for_log, "output_topics_missing", 30)
    assert not logged(service, "partitions_assigned"), "nothing is read while the predictions have nowhere to go"
    await ensure_topics(kafka_broker.bootstrap_servers, {predictions: TOPIC_PARTITIONS})
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    await PacedStream(kafka_broker.bootstrap_servers, topics, 200, rate=2000, label_lag=20).run()
    await wait_until_joined(service, 200, timeout=60)
    assert service.stop() == 0
    assert len(await read_predictions(kafka_broker.bootstrap_servers, predictions, expected=200, timeout=10)) == 200
