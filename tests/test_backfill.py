"""A backfill scores like the same stream run live (docs/learning.md, Backfill).

The same records twice, through the broker, the service in-process: once live (the service
running while they are produced, each label a few events after its event), then read again from
the start by a second service of another group, with everything already in the topics. The
stream has no drift: after a drift, the live run's small steps (a step every ``MAX_BATCH_DELAY_MS``)
adapt faster than a backfill's steps of ``TRAIN_BATCH_SIZE``, whatever the order of predictions.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from stream_learner.config import Settings
from stream_learner.service import Service
from stream_learner.tools.client import EventProducer
from stream_learner.tools.synthetic import DriftingStream

from .conftest import BrokerInfo, TestTopics

DIM, EVENTS, LABEL_LAG, RATE = 8, 2000, 5, 500.0


def settings(broker: BrokerInfo, topics: TestTopics, group: str, directory: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, bootstrap_servers=broker.bootstrap_servers, events_topic=topics.events,
        labels_topic=topics.labels, predictions_topic=topics.predictions, dead_letter_topic=topics.dead_letter,
        group_id=f"{group}-{topics.events}", input_dim=DIM, checkpoint_dir=directory, metrics_port=0,
        log_level="warning",
    )  # fmt: skip


async def produce(broker: BrokerInfo, topics: TestTopics) -> None:
    """Every event and its label ``LABEL_LAG`` events later, at ``RATE`` events a second."""
    stream = DriftingStream(DIM, seed=3, drift_at=None).batch(0, EVENTS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=2)
    await producer.start()
    try:
        sender = EventProducer(producer=producer, events_topic=topics.events, labels_topic=topics.labels)
        started, step = time.monotonic(), 5
        for i in range(0, EVENTS + LABEL_LAG, step):
            if i < EVENTS:
                await (await sender.send_events(stream.ids[i : i + step], stream.features[i : i + step]))
            done = slice(max(i - LABEL_LAG, 0), min(i + step - LABEL_LAG, EVENTS))
            if done.stop > done.start:
                await (await sender.send_labels(stream.ids[done], stream.labels[done].tolist()))
            await asyncio.sleep(max(0.0, started + (i + step) / RATE - time.monotonic()))
    finally:
        await producer.stop()


async def scored(service: Service, task: asyncio.Task[None]) -> dict[str, Any]:
    """The service's figures once every label went through a step; the service is stopped."""
    deadline = time.monotonic() + 60
    counters = service.learner.trainer.counters
    while counters.examples_trained + counters.examples_skipped < EVENTS and time.monotonic() < deadline:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    stats = service.status.stats()
    service.stop()
    await task
    assert stats["examples_trained"] == EVENTS, stats
    return stats


@pytest.mark.integration
async def test_a_backfill_scores_within_two_points_of_the_same_stream_live(
    kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path
) -> None:
    live = Service(settings(kafka_broker, topics, "live", tmp_path / "live"))
    task = asyncio.create_task(live.run())
    deadline = time.monotonic() + 60
    while live.status.health()["assigned_partitions"] < 8 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await produce(kafka_broker, topics)
    live_stats = await scored(live, task)

    backfill = Service(settings(kafka_broker, topics, "backfill", tmp_path / "backfill"))
    backfill_stats = await scored(backfill, asyncio.create_task(backfill.run()))
    accuracy = live_stats["prequential_accuracy"], backfill_stats["prequential_accuracy"]
    assert accuracy[1] >= accuracy[0] - 0.02, f"live {accuracy[0]:.1%}, backfill {accuracy[1]:.1%}"
