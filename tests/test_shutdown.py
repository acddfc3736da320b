"""SIGTERM under full load: a producer floods events and labels while the service is told to stop.
It must exit 0 promptly with a final checkpoint, and a restart must go on from that checkpoint so
that every label trains once and, with no crash in between, every event is predicted once.
Real broker, the service as a real child process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .observe import progress_lines, read_to_end, wait_for_progress
from .service_process import checkpoint_show
from .stream_io import produce_events, produce_labels

pytestmark = pytest.mark.integration

MOST = 60_000
"""Most events the flood sends (it stops soon after the SIGTERM, well before this, on 2 cores)."""
CHUNK = 1000
EXIT_BOUND_S = 10.0
SETTINGS = {"session_timeout_ms": 6000, "log_interval_s": 0.2}


async def flood(bootstrap: str, topics: TestTopics, sent: list[int], stop: asyncio.Event) -> None:
    """Events as fast as the producer goes, each chunk's labels right after it, until ``stop`` (or MOST)."""
    stream = DriftingStream(INPUT_DIM, seed=4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for start in range(0, MOST, CHUNK):
            if stop.is_set():
                return
            batch = stream.batch(start, CHUNK)
            await produce_events(producer, topics.events, batch)
            await produce_labels(producer, topics.labels, batch.ids, batch.labels)
            sent[0] = start + CHUNK
    finally:
        await producer.stop()


@pytest.mark.both_clients
async def test_sigterm_under_full_load_exits_promptly_with_a_final_checkpoint_and_resumes_from_it(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints = kafka_broker.bootstrap_servers, tmp_path / "checkpoints"
    service = start_service(**SETTINGS)
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    sent, stop_flood = [0], asyncio.Event()
    producing = asyncio.create_task(flood(bootstrap, topics, sent, stop_flood))
    busy = await wait_for_progress(service, lambda p: p["events_predicted"] >= 5000, "the service busy")
    assert not producing.done(), "the flood ended before SIGTERM: make MOST larger"

    started = time.monotonic()
    code = await asyncio.to_thread(service.stop, 30)
    exit_s = time.monotonic() - started
    sent_at_stop = sent[0]
    assert code == 0, service.log_tail()
    assert exit_s < EXIT_BOUND_S, f"exit took {exit_s:.1f}s"
    final = [e for e in service.log_events() if e.get("event") == "checkpoint_written"][-1]
    assert final["reason"] == "shutdown", final
    stopped = [e for e in service.log_events() if e.get("event") == "service_stopped"]
    assert len(stopped) == 1 and stopped[0]["failed"] is False
    # The final checkpoint trained everything it joined: nothing queued, no label half-way.
    at_stop = CheckpointStore(checkpoints, keep=1).load_latest()
    assert at_stop is not None and str(at_stop.path) == final["path"]
    summary = at_stop.state["summary"]
    assert summary["queued_examples"] == 0
    assert summary["examples_trained"] + at_stop.state["trainer"]["counters"]["examples_skipped"] == summary["labels_joined"]
    stop_flood.set()
    await producing
    total = sent[0]

    service = start_service(**SETTINGS)
    restored = await asyncio.to_thread(service.wait_for_log, "checkpoint_restored", 60)
    assert restored["path"] == final["path"]
    await wait_for_progress(
        service,
        lambda p: p["events_consumed"] == total and p["labels_joined"] == total and p["queued_examples"] == 0,
        "the rest of the flood trained",
    )
    assert service.stop() == 0, service.log_tail()
    shown = checkpoint_show(checkpoints)
    assert shown["events_predicted"] == total and shown["dead_lettered"] == 0 and shown["pending_events"] == 0
    assert shown["labels_joined"] == shown["examples_trained"] == total

    predictions = Counter(orjson.loads(r.value)["id"] for r in await read_to_end(bootstrap, topics.predictions))
    assert len(predictions) == total and set(predictions.values()) == {1}, "a clean stop predicts no event twice"
    lag = max(p["lag"] for p in progress_lines(service))
    print(
        f"\nSIGTERM after {busy['events_predicted']} events predicted, {sent_at_stop} sent (of {total}): exit 0 in "
        f"{exit_s:.2f}s; shutdown checkpoint at {summary['events_consumed']} events, {summary['labels_joined']} labels; "
        f"restart's peak lag {lag} records"
    )
