"""Crash safety: kill -9 at random moments and at every checkpoint step; a replay equals an
uninterrupted run. The service runs as a real child process against the real broker."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
import torch
from aiokafka import AIOKafkaProducer

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .librdkafka_io import read_predictions as read_to_end_by_id
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import produce_events, produce_labels

pytestmark = pytest.mark.integration

FAST = {"checkpoint_interval_s": 0.5, "session_timeout_ms": 6000}
CHECKPOINT_STEPS = ["drained:2", "snapshot:1", "written_temp:2", "written:1", "committed:2"]


class PacedStream:
    """Produces events at a fixed rate, each event's label ``label_lag`` events later; counts what it sent."""

    def __init__(self, bootstrap: str, topics: TestTopics, total: int, rate: float, label_lag: int) -> None:
        self.bootstrap, self.topics, self.total, self.rate, self.label_lag = bootstrap, topics, total, rate, label_lag
        self.stream = DriftingStream(INPUT_DIM, seed=3)
        self.events_sent = 0

    async def run(self, chunk: int = 50) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=2)
        await producer.start()
        try:
            started = time.monotonic()
            for start in range(0, self.total + self.label_lag, chunk):
                if start < self.total:
                    await produce_events(producer, self.topics.events, self.stream.batch(start, min(chunk, self.total - start)))
                    self.events_sent = min(start + chunk, self.total)
                first_label = start - self.label_lag
                if first_label + chunk > 0:
                    done = self.stream.batch(max(first_label, 0), min(chunk, self.total - max(first_label, 0), first_label + chunk))
                    await produce_labels(producer, self.topics.labels, done.ids, done.labels)
                await asyncio.sleep(max(0.0, started + (start + chunk) / self.rate - time.monotonic()))
        finally:
            await producer.stop()


def events_in_latest_checkpoint(directory: Path, events_topic: str) -> int:
    loaded = CheckpointStore(directory, keep=1).load_latest()
    return 0 if loaded is None else sum(loaded.state["offsets"].get(events_topic, {}).values())


async def wait_for_exit(service: ServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while service.alive():
        assert time.monotonic() < deadline, f"service did not crash as injected:\n{service.log_tail()}"
        await asyncio.sleep(0.05)


async def wait_until_joined(service: ServiceProcess, labels: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = [e for e in service.log_events() if e.get("event") == "progress"]
        if progress and progress[-1]["labels_joined"] >= labels and progress[-1]["queued_examples"] == 0:
            return
        assert service.alive(), service.log_tail()
        await asyncio.sleep(0.3)
    raise AssertionError(f"labels_joined did not reach {labels}:\n{service.log_tail()}")


CHALLENGERS = {"challengers": "learning_rates", "promotion_window": 300, "promotion_margin": 0.02}
"""Two challengers, judged over short windows so that promotions happen within these streams."""


@pytest.mark.parametrize(
    ("models", "crashes", "kafka_client"),
    [({}, [*CHECKPOINT_STEPS, "random", "random"], "aiokafka"), (CHALLENGERS, ["written:1", "random", "random"], "librdkafka")],
    ids=["one-model-aiokafka", "challengers-librdkafka"],
    indirect=["kafka_client"],
)
async def test_kill_9_at_random_moments_and_checkpoint_steps_trains_every_label_once(
    kafka_broker: BrokerInfo,
    topics: TestTopics,
    start_service: StartService,
    tmp_path: Path,
    models: dict[str, object],
    crashes: list[str],
) -> None:
    """Challengers crash at fewer steps here (the replay test below crashes them at four steps of the
    cut). The two variants run on the two Kafka clients: what they test of each other is independent."""
    total, checkpoints = 6000, tmp_path / "checkpoints"
    producer = PacedStream(kafka_broker.bootstrap_servers, topics, total, rate=500, label_lag=150)
    producing = asyncio.create_task(producer.run())
    rng = random.Random(2)
    duplicate_bound, kills = 0, 0
    for crash in crashes:
        service = start_service(**FAST, **models, **({} if crash == "random" else {"crash_at": crash}))
        await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
        if crash == "random":
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            service.kill()
        else:
            await wait_for_exit(service, timeout=30)
            assert any(e.get("event") == "crash_injected" for e in service.log_events()), service.log_tail()
        kills += 1
        duplicate_bound += producer.events_sent - events_in_latest_checkpoint(checkpoints, topics.events)
    await producing

    service = start_service(**FAST, **models)
    await wait_until_joined(service, total)
    assert service.stop() == 0
    shown = checkpoint_show(checkpoints)
    assert shown["labels_joined"] == shown["examples_trained"] == total, shown
    if models:
        assert {m["examples_trained"] for m in shown["models"].values()} == {total}, shown["models"]
        assert {m["scored"] for m in shown["models"].values()} == {total}, "each model scored every example once"
    assert shown["events_predicted"] == total and shown["pending_events"] == 0 and shown["dead_lettered"] == 0

    predictions = await asyncio.to_thread(read_to_end_by_id, kafka_broker.bootstrap_servers, topics.predictions)
    assert len(predictions) == total, "every event must have at least one prediction"
    duplicates = sum(len(p) for p in predictions.values()) - total
    print(f"kills survived: {kills}, duplicate predictions: {duplicates} (bound {duplicate_bound})")
    assert duplicates <= duplicate_bound


async def prefill(bootstrap: str, topics: TestTopics, total: int, label_lag: int) -> None:
    stream = DriftingStream(INPUT_DIM, seed=9)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, total, 500):
            await produce_events(producer, topics.events, stream.batch(start, 500))
            if start >= label_lag:
                done = stream.batch(start - label_lag, 500)
                await produce_labels(producer, topics.labels, done.ids, done.labels)
        for start in range(max(0, total - label_lag), total, 500):
            done = stream.batch(start, 500)
            await produce_labels(producer, topics.labels, done.ids, done.labels)
    finally:
        await producer.stop()


async def run_to_end(
    start_service: StartService, directory: Path, group: str, total: int, crashes: list[str], models: dict[str, object]
) -> dict:
    # Small fetches and frequent checkpoints, so that each crash lands mid-stream: the second
    # checkpoint must come before the stream is done (at 0.2 s a fast machine finished first).
    slow = {**FAST, **models, "log_level": "debug", "checkpoint_interval_s": 0.05, "fetch_max_records": 100, "checkpoint_dir": directory, "group_id": group}
    for crash in crashes:
        service = start_service(**slow, crash_at=crash)
        await wait_for_exit(service, timeout=60)
    service = start_service(**slow)
    await wait_until_joined(service, total)
    assert service.stop() == 0
    loaded = CheckpointStore(directory, keep=1).load_latest()
    assert loaded is not None
    return loaded.state


@pytest.mark.parametrize(
    ("models", "kafka_client"),
    [({}, "aiokafka"), (CHALLENGERS, "librdkafka")],
    ids=["one-model-aiokafka", "challengers-librdkafka"],
    indirect=["kafka_client"],
)
async def test_replay_with_crashes_equals_an_uninterrupted_run(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path, models: dict[str, object]
) -> None:
    total = 8000
    await prefill(kafka_broker.bootstrap_servers, topics, total, label_lag=500)
    calm = await run_to_end(start_service, tmp_path / "calm", "calm", total, [], models)
    crashes = ["written:2", "committed:2", "written_temp:2", "drained:2"]
    crashed = await run_to_end(start_service, tmp_path / "crashed", "crashed", total, crashes, models)

    for key in ("events_predicted", "labels_joined", "examples_trained", "model_version", "pending_events"):
        assert crashed["summary"][key] == calm["summary"][key], key
    assert calm["summary"]["examples_trained"] == total
    trainers = [(calm["trainer"], crashed["trainer"])]
    if models:
        assert calm["summary"]["promotions"] >= 1, "the stream is meant to promote a challenger"
        for key in ("serving_model", "promotions", "models"):
            assert crashed["summary"][key] == calm["summary"][key], key
        challengers = calm["trainer"]["challengers"]
        trainers += [(challengers[name], crashed["trainer"]["challengers"][name]) for name in challengers]
    for calm_trainer, crashed_trainer in trainers:
        for name, weight in calm_trainer["model"].items():
            assert torch.allclose(crashed_trainer["model"][name], weight, atol=1e-5), name
