"""Disk trouble: the checkpoint directory turns unusable while the service runs, or the newest
checkpoint file is truncated while it is stopped. Real broker, the service as a real child process.

One test runs the service in this process instead, to hold its checkpoint write on a slow "disk".

Tests run as root, so a chmod does not stop writes: the directory is renamed away and a regular
file put at its path, so that creating the temp file fails with an OSError (as on a full, read-only
or lost volume).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from aiokafka import TopicPartition

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.service import Service
from stream_learner.tools.synthetic import DriftingStream

from .conftest import INPUT_DIM, TOPIC_PARTITIONS, BrokerInfo, StartService, TestTopics
from .observe import as_offsets, committed_offsets, wait_for_progress
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import produce_slice, read_predictions

pytestmark = pytest.mark.integration

STREAM = DriftingStream(INPUT_DIM, seed=11)
BATCH = 500


async def produce_stream(bootstrap: str, topics: TestTopics, start: int, n: int) -> list[str]:
    """Events ``start .. start+n-1`` of the stream and then their labels; returns their ids."""
    return await produce_slice(bootstrap, topics, STREAM, start, n)


def log_count(service: ServiceProcess, event: str) -> int:
    return sum(e.get("event") == event for e in service.log_events())


async def wait_for_log_count(service: ServiceProcess, event: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while log_count(service, event) < count:
        assert service.alive(), service.log_tail()
        assert time.monotonic() < deadline, f"fewer than {count} {event!r} within {timeout}s:\n{service.log_tail()}"
        await asyncio.sleep(0.1)


async def wait_for_checkpoint(directory: Path, events: int, timeout: float = 30.0) -> None:
    """Until the newest checkpoint in ``directory`` holds ``events`` events read."""
    deadline = time.monotonic() + timeout
    while True:
        loaded = CheckpointStore(directory, keep=1).load_latest()
        if loaded is not None and loaded.state["summary"]["events_consumed"] == events:
            return
        assert time.monotonic() < deadline, f"no checkpoint with {events} events within {timeout}s"
        await asyncio.sleep(0.1)


async def wait_for_commit(
    bootstrap: str, group: str, inputs: dict[str, int], directory: Path, timeout: float = 10.0
) -> dict[TopicPartition, int]:
    """Until the group's committed offsets are those of the newest checkpoint in ``directory``; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        loaded = CheckpointStore(directory, keep=1).load_latest()
        assert loaded is not None
        committed = await committed_offsets(bootstrap, group, inputs)
        if committed == as_offsets(loaded.state["offsets"], inputs):
            return committed
        assert time.monotonic() < deadline, f"committed {committed} != checkpoint {loaded.state['offsets']}"
        await asyncio.sleep(0.2)


def joined(n: int) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["labels_joined"] >= n and p["queued_examples"] == 0


def make_unusable(directory: Path, away: Path) -> None:
    """Move the directory away and put a regular file at its path."""
    directory.rename(away)
    directory.write_text("not a directory any more\n")


def make_usable(directory: Path, away: Path) -> None:
    directory.unlink()
    away.rename(directory)


@pytest.mark.both_clients
async def test_unusable_checkpoint_directory_keeps_predicting_commits_nothing_new_and_recovers(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints, away = kafka_broker.bootstrap_servers, tmp_path / "checkpoints", tmp_path / "checkpoints.away"
    group = f"group-{topics.events}"
    inputs = {topics.events: TOPIC_PARTITIONS, topics.labels: TOPIC_PARTITIONS}
    service = start_service(checkpoint_interval_s=0.5, log_interval_s=0.2, session_timeout_ms=6000)
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    await produce_stream(bootstrap, topics, 0, BATCH)
    await wait_for_progress(service, joined(BATCH), "the first batch trained")
    await wait_for_checkpoint(checkpoints, BATCH)
    await wait_for_commit(bootstrap, group, inputs, checkpoints)

    # The directory becomes unusable.
    make_unusable(checkpoints, away)
    failed_before = log_count(service, "checkpoint_write_failed")
    second = await produce_stream(bootstrap, topics, BATCH, BATCH)
    # The service keeps predicting: the new events get their predictions.
    predictions = await read_predictions(bootstrap, topics.predictions, expected=2 * BATCH, timeout=60)
    assert set(second) <= set(predictions)
    await wait_for_progress(service, joined(2 * BATCH), "the second batch trained")
    # It fails to write, says so, and retries (every CHECKPOINT_RETRY_S, 5 s).
    await wait_for_log_count(service, "checkpoint_write_failed", failed_before + 2, timeout=20)
    failure = [e for e in service.log_events() if e.get("event") == "checkpoint_write_failed"][-1]
    assert failure["level"] == "error" and failure["retry_in_s"] > 0 and failure["error"]
    assert service.alive()
    # Kafka's committed offsets stay at the last durable checkpoint: none of the second batch.
    committed = await wait_for_commit(bootstrap, group, inputs, away, timeout=0)
    assert sum(committed[tp] for tp in committed if tp.topic == topics.events) == BATCH

    # The directory comes back: checkpoints resume, and the offsets are committed again.
    make_usable(checkpoints, away)
    await wait_for_checkpoint(checkpoints, 2 * BATCH, timeout=20)  # at the next retry
    committed = await wait_for_commit(bootstrap, group, inputs, checkpoints)
    assert sum(committed[tp] for tp in committed if tp.topic == topics.events) == 2 * BATCH
    assert sum(committed[tp] for tp in committed if tp.topic == topics.labels) == 2 * BATCH

    assert service.stop() == 0, service.log_tail()
    shown = checkpoint_show(checkpoints)
    assert shown["events_predicted"] == 2 * BATCH and shown["dead_lettered"] == 0
    assert shown["labels_joined"] == shown["examples_trained"] == 2 * BATCH


async def test_truncated_newest_checkpoint_falls_back_to_the_previous_one_and_trains_every_label_once(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints = kafka_broker.bootstrap_servers, tmp_path / "checkpoints"
    # A long interval: each run writes just its shutdown checkpoint, so the two newest hold different cuts.
    calm = {"checkpoint_interval_s": 300, "log_interval_s": 0.2, "session_timeout_ms": 6000}
    for run in range(2):
        service = start_service(**calm)
        await produce_stream(bootstrap, topics, run * BATCH, BATCH)
        await wait_for_progress(service, joined((run + 1) * BATCH), f"batch {run} trained")
        assert service.stop() == 0, service.log_tail()
    newest, previous = CheckpointStore(checkpoints, keep=3).paths()[:2]
    size = newest.stat().st_size
    os.truncate(newest, size // 2)

    await produce_stream(bootstrap, topics, 2 * BATCH, BATCH)
    service = start_service(**calm)
    restored = await asyncio.to_thread(service.wait_for_log, "checkpoint_restored", 60)
    unreadable = [e for e in service.log_events() if e.get("event") == "checkpoint_unreadable"]
    assert [e["path"] for e in unreadable] == [str(newest)] and unreadable[0]["level"] == "warning"
    assert restored["path"] == str(previous)
    # The second batch is read again from the previous checkpoint's offsets, and trains once.
    await wait_for_progress(service, joined(3 * BATCH), "every batch trained")
    assert service.stop() == 0, service.log_tail()
    shown = checkpoint_show(checkpoints)
    assert shown["events_predicted"] == 3 * BATCH and shown["dead_lettered"] == 0
    assert shown["labels_joined"] == shown["examples_trained"] == 3 * BATCH
    assert sum(int(o) for o in shown["offsets"][topics.labels].values()) == 3 * BATCH


async def test_sigterm_while_the_checkpoint_directory_is_unusable_loses_nothing_and_says_the_stop_failed(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints, away = kafka_broker.bootstrap_servers, tmp_path / "checkpoints", tmp_path / "checkpoints.away"
    settings = {"checkpoint_interval_s": 0.5, "log_interval_s": 0.2, "session_timeout_ms": 6000}
    service = start_service(**settings)
    await produce_stream(bootstrap, topics, 0, BATCH)
    await wait_for_progress(service, joined(BATCH), "the first batch trained")
    await wait_for_checkpoint(checkpoints, BATCH)
    make_unusable(checkpoints, away)
    await produce_stream(bootstrap, topics, BATCH, BATCH)
    await wait_for_progress(service, joined(2 * BATCH), "the second batch trained")
    code = service.stop()
    failures = [e for e in service.log_events() if e.get("event") == "checkpoint_write_failed"]
    assert failures and failures[-1]["reason"] == "shutdown"
    stopped = [e for e in service.log_events() if e.get("event") == "service_stopped"][-1]

    # Nothing is lost: the restart goes on from the last durable checkpoint and trains every label once.
    make_usable(checkpoints, away)
    service = start_service(**settings)
    await wait_for_progress(service, joined(2 * BATCH), "the second batch trained again")
    assert service.stop() == 0, service.log_tail()
    shown = checkpoint_show(checkpoints)
    assert shown["labels_joined"] == shown["examples_trained"] == 2 * BATCH and shown["events_predicted"] == 2 * BATCH

    # But the stop without its final checkpoint must not look clean.
    print(f"\nexit code {code}, service_stopped failed={stopped['failed']}")
    assert code != 0 and stopped["failed"] is True


async def test_a_file_at_the_checkpoint_directory_stops_the_start_instead_of_starting_from_scratch(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, checkpoints, away = kafka_broker.bootstrap_servers, tmp_path / "checkpoints", tmp_path / "checkpoints.away"
    settings = {"log_interval_s": 0.2, "session_timeout_ms": 6000}
    service = start_service(**settings)
    await produce_stream(bootstrap, topics, 0, BATCH)
    await wait_for_progress(service, joined(BATCH), "the first batch trained")
    assert service.stop() == 0
    make_unusable(checkpoints, away)

    service = start_service(**settings)
    deadline = time.monotonic() + 30
    while service.alive() and time.monotonic() < deadline and log_count(service, "partitions_assigned") == 0:
        await asyncio.sleep(0.1)
    assert not service.alive() and service.proc is not None and service.proc.returncode == 2, service.log_tail()
    assert str(checkpoints) in service.log_tail(), "the error names the checkpoint directory"
    assert not any(e.get("event") == "no_checkpoint" for e in service.log_events())


async def test_a_slow_checkpoint_write_holds_back_no_prediction_and_commits_the_cut_it_was_given(
    kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path
) -> None:
    bootstrap, directory, group = kafka_broker.bootstrap_servers, tmp_path / "checkpoints", f"group-{topics.events}"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, bootstrap_servers=bootstrap, events_topic=topics.events, labels_topic=topics.labels,
        predictions_topic=topics.predictions, dead_letter_topic=topics.dead_letter, group_id=group,
        input_dim=INPUT_DIM, checkpoint_dir=directory, checkpoint_interval_s=0.2, metrics_port=0, session_timeout_ms=6000,
    )  # fmt: skip
    service = Service(settings)
    writing, release, written = threading.Event(), threading.Event(), []
    write = service.checkpoint.store.write

    def slow_write(state: dict[str, Any], **kwargs: Any) -> Path:
        writing.set()
        assert release.wait(60)
        written.append(state["summary"]["events_predicted"])
        return write(state, **kwargs)

    service.checkpoint.store.write = slow_write  # type: ignore[method-assign]
    running = asyncio.create_task(service.run())
    try:
        first = await produce_stream(bootstrap, topics, 0, 200)
        assert await asyncio.to_thread(writing.wait, 30), "no checkpoint was started"
        cut = service.checkpoint.last, service.totals["events_predicted"]
        second = await produce_stream(bootstrap, topics, 200, 300)
        predictions = await read_predictions(bootstrap, topics.predictions, expected=500, timeout=30)
        assert set(first + second) <= set(predictions), "events were held back behind the checkpoint's write"
        assert not written and not list(directory.glob("checkpoint-*.pt")) and cut[0] == {}
        inputs = {topics.events: TOPIC_PARTITIONS, topics.labels: TOPIC_PARTITIONS}
        committed = await committed_offsets(bootstrap, group, inputs)
        assert set(committed.values()) == {-1}, "offsets were committed before the checkpoint was written"
        release.set()
        await wait_for_checkpoint(directory, 500)
        await wait_for_commit(bootstrap, group, inputs, directory)
        assert written[0] <= cut[1] < 500 and written == sorted(written) and written[-1] == 500
        oldest = min(CheckpointStore(directory, keep=10).load_all(), key=lambda c: c.state["checkpoint_id"])
        assert oldest.state["summary"]["events_predicted"] == written[0]  # the held write kept the cut it was given
    finally:
        release.set()
        service.stop()
        await asyncio.wait_for(running, 60)


async def test_any_error_from_a_checkpoint_write_is_retried_and_commits_nothing_meanwhile(
    kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path
) -> None:
    """Where no tmpfs can be mounted (not root): the full disk's error as torch.save raises it, injected."""
    bootstrap, directory, group = kafka_broker.bootstrap_servers, tmp_path / "checkpoints", f"group-{topics.events}"
    settings = Settings(  # type: ignore[call-arg]
        bootstrap_servers=bootstrap, events_topic=topics.events, labels_topic=topics.labels,
        predictions_topic=topics.predictions, dead_letter_topic=topics.dead_letter, group_id=group,
        input_dim=INPUT_DIM, checkpoint_dir=directory, checkpoint_interval_s=0.2, metrics_port=0, session_timeout_ms=6000,
    )  # fmt: skip
    service = Service(settings)
    failures, write = [], service.checkpoint.store.write

    def full_disk(state: dict[str, Any], **kwargs: Any) -> Path:
        if len(failures) < 2:
            failures.append(state["summary"]["events_predicted"])
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7680 vs 7616")
        return write(state, **kwargs)

    service.checkpoint.store.write = full_disk  # type: ignore[method-assign]
    running = asyncio.create_task(service.run())
    try:
        ids = await produce_stream(bootstrap, topics, 0, 300)
        predictions = await read_predictions(bootstrap, topics.predictions, expected=300, timeout=30)
        assert set(ids) <= set(predictions), "predictions stopped when the checkpoint could not be written"
        inputs = {topics.events: TOPIC_PARTITIONS, topics.labels: TOPIC_PARTITIONS}
        assert failures and set((await committed_offsets(bootstrap, group, inputs)).values()) == {-1}
        await wait_for_checkpoint(directory, 300, timeout=30)  # the retry, 5 s after each failure
        await wait_for_commit(bootstrap, group, inputs, directory)
        assert len(failures) == 2 and not list(directory.glob(".checkpoint-*.tmp"))
        assert not running.done(), "the service must not have stopped"
    finally:
        service.stop()
        await asyncio.wait_for(running, 60)
