"""Records deleted before they were read (retention): the service says so, and its lag is the truth."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from stream_learner.kafka.offset_resets import watch_offset_resets
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .observe import progress_lines, wait_for_progress
from .stream_io import produce_events

FETCHER = logging.getLogger("aiokafka.consumer.fetcher")


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_aiokafkas_reset_message_calls_back_and_its_other_info_lines_stay_quiet() -> None:
    calls: list[tuple[TopicPartition, int]] = []
    kept = Kept()
    FETCHER.addHandler(kept)
    try:
        watch_offset_resets(lambda tp, offset: calls.append((tp, offset)))
        watch_offset_resets(lambda tp, offset: calls.append((tp, offset)))  # installed once, the last callback wins
        tp = TopicPartition("events", 3)
        FETCHER.info("Fetch offset %s is out of range for partition %s, resetting offset", 1200, tp)
        FETCHER.info("Adding fetch request for partition %s at offset %d", tp, 7)
        FETCHER.warning("Not authorized to read from topic %s.", "events")
    finally:
        FETCHER.removeHandler(kept)
    assert calls == [(tp, 1200)]
    assert [r.levelno for r in kept.records] == [logging.WARNING]


@pytest.mark.integration
@pytest.mark.kafka_only("delete_records (retention) is missing")
@pytest.mark.usefixtures("require_real_kafka")
async def test_records_deleted_before_they_were_read_are_logged_and_the_lag_goes_to_zero(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, stream = kafka_broker.bootstrap_servers, DriftingStream(INPUT_DIM, seed=9)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        service = start_service(log_interval_s=0.2)
        await produce_events(producer, topics.events, stream.batch(0, 200))
        await wait_for_progress(service, lambda p: p["events_predicted"] >= 200, "the first events predicted")
        assert service.stop() == 0
        await produce_events(producer, topics.events, stream.batch(200, 400))
        partitions = await producer.partitions_for(topics.events)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            high = {p: (await _high_watermark(bootstrap, TopicPartition(topics.events, p))) for p in partitions}
            await admin.delete_records({TopicPartition(topics.events, p): RecordsToDelete(before_offset=h) for p, h in high.items()})
        finally:
            await admin.close()
    finally:
        await producer.stop()
    service = start_service(log_interval_s=0.2)
    await asyncio.to_thread(service.wait_for_log, "offset_out_of_range", 60)
    await wait_for_progress(service, lambda p: p["lag"] == 0, "the lag down to zero")
    assert service.stop() == 0
    assert progress_lines(service)[-1]["events_predicted"] == 200  # the deleted 400 were never read


async def _high_watermark(bootstrap: str, tp: TopicPartition) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()
