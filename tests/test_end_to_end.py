"""End to end against a real broker: the service as a child process, a producer and a consumer
written from the topic contract alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest
from aiokafka import AIOKafkaProducer

from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, TestTopics
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import produce_events, produce_labels, read_predictions

pytestmark = pytest.mark.integration

CHUNK = 100
LABEL_DELAY_CHUNKS = 3


async def produce_stream(bootstrap: str, topics: TestTopics, stream: DriftingStream, start: int, count: int) -> None:
    """Events in chunks with each chunk's labels a few chunks later; one chunk's labels come before its events."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        chunks = [stream.batch(i, CHUNK) for i in range(start, start + count, CHUNK)]
        early = chunks[len(chunks) // 2]
        await produce_labels(producer, topics.labels, early.ids, early.labels)
        for k, chunk in enumerate(chunks):
            await produce_events(producer, topics.events, chunk, ts=1700000000.5 + k)
            if k >= LABEL_DELAY_CHUNKS and chunks[k - LABEL_DELAY_CHUNKS] is not early:
                late = chunks[k - LABEL_DELAY_CHUNKS]
                await produce_labels(producer, topics.labels, late.ids, late.labels)
            time.sleep(0.01)
        for late in chunks[-LABEL_DELAY_CHUNKS:]:
            if late is not early:
                await produce_labels(producer, topics.labels, late.ids, late.labels)
    finally:
        await producer.stop()


def wait_until_joined(service: ServiceProcess, labels: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = [e for e in service.log_events() if e.get("event") == "progress"]
        if progress and progress[-1]["labels_joined"] >= labels:
            return
        assert service.alive(), service.log_tail()
        time.sleep(0.3)
    raise AssertionError(f"labels_joined did not reach {labels}:\n{service.log_tail()}")


@pytest.mark.both_clients
async def test_predicts_every_event_once_learns_and_resumes_from_checkpoint(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: Callable[[], ServiceProcess], tmp_path: Path
) -> None:
    bootstrap, first, second = kafka_broker.bootstrap_servers, 3000, 500
    stream = DriftingStream(INPUT_DIM, seed=11)

    service = start_service()
    service.wait_for_log("partitions_assigned")
    await produce_stream(bootstrap, topics, stream, 0, first)
    predictions = await read_predictions(bootstrap, topics.predictions, expected=first, timeout=90)
    assert len(predictions) == first and all(len(p) == 1 for p in predictions.values())
    sample = predictions["e-0"][0]
    assert set(sample) == {"id", "prediction", "scores", "model_version", "ts"}
    assert sample["prediction"] in (0, 1) and abs(sum(sample["scores"]) - 1) < 1e-4
    assert sample["prediction"] == max(range(2), key=lambda c: sample["scores"][c])
    assert sample["ts"] == 1700000000.5
    versions = [p[0]["model_version"] for p in predictions.values()]
    assert min(versions) == 0 and max(versions) > 0, "later events must be predicted by trained weights"

    wait_until_joined(service, first)
    assert service.stop() == 0
    shown = checkpoint_show(tmp_path / "checkpoints")
    assert shown["events_predicted"] == first
    assert shown["labels_joined"] == shown["examples_trained"] == first
    assert shown["pending_events"] == 0
    assert shown["prequential_recent_accuracy"] > 0.9, shown
    assert sum(shown["offsets"][topics.events].values()) == first
    assert sum(shown["offsets"][topics.labels].values()) == first
    for key in ("checkpoint_id", "created_at", "model_version"):
        assert key in shown

    service = start_service()
    service.wait_for_log("partitions_assigned")
    await produce_stream(bootstrap, topics, stream, first, second)
    predictions = await read_predictions(bootstrap, topics.predictions, expected=first + second, timeout=90)
    assert len(predictions) == first + second
    assert all(len(p) == 1 for p in predictions.values()), "a restarted service must not re-read what it checkpointed"
    resumed = [p[0]["model_version"] for i, p in predictions.items() if int(i.split("-")[1]) >= first]
    assert min(resumed) >= shown["model_version"], "the restarted service must start from the checkpointed weights"
    wait_until_joined(service, first + second)
    assert service.stop() == 0
    final = checkpoint_show(tmp_path / "checkpoints")
    assert final["events_predicted"] == first + second
    assert final["labels_joined"] == final["examples_trained"] == first + second
