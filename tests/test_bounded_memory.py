"""Bounded memory under a flood of events whose labels never come (and labels whose events never
come): the join holds at most MAX_PENDING of each, the rest is evicted or expires (counted),
MISSING_LABEL_POLICY=default trains the dropped events with DEFAULT_LABEL, and the child's
resident memory stays flat once warmed up. Real broker, the service as a real child process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream_learner.checkpointing.store import CheckpointStore

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .observe import progress_lines, rss_bytes, wait_for_progress
from .service_process import ServiceProcess, checkpoint_show

pytestmark = pytest.mark.integration

MAX_PENDING = 2000
LABEL_TTL_S = 2.0
EVENTS = 100_000
WARM_UP = 20_000
ORPHAN_LABELS = 10_000
"""Labels for ids that are never sent: early labels, bounded by MAX_PENDING too. Sent in two bursts
(at the start and half-way), so that each burst passes MAX_PENDING before the TTL clears it."""
RATE = 4000.0
"""Events per second: sustained, and below what the service handles on 2 busy cores, so the
consumer's fetch buffer (up to 64 MB prefetched in a backlog) does not blur the figure."""
RSS_GROWTH_BOUND = 16 * 1024 * 1024
"""After warm-up, 80k more events may add at most this much resident memory. Everything the join
may hold at MAX_PENDING=2000 and dim 8 is well under 1 MB (pending rows about 100 bytes each,
early labels a few hundred bytes each), so a flat service stays within allocator noise (1.1 and
1.5 MiB measured here); a leak of 200 bytes per event (a small Python object kept per event) would
pass 16 MiB."""


async def flood(bootstrap: str, topics: TestTopics) -> None:
    """EVENTS events at RATE, and ORPHAN_LABELS labels for ids never sent, in two bursts."""
    rng = np.random.default_rng(5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        chunk, started = 1000, time.monotonic()
        bursts = {0: range(ORPHAN_LABELS // 2), EVENTS // 2: range(ORPHAN_LABELS // 2, ORPHAN_LABELS)}
        for start in range(0, EVENTS, chunk):
            features = np.round(rng.normal(size=(chunk, INPUT_DIM)), 3).tolist()
            sends = []
            for i, row in enumerate(features, start):
                key = f"ev-{i}".encode()
                sends.append(await producer.send(topics.events, orjson.dumps({"id": f"ev-{i}", "features": row}), key=key))
            for j in bursts.get(start, ()):
                key = f"never-{j}".encode()
                sends.append(await producer.send(topics.labels, orjson.dumps({"id": f"never-{j}", "label": j % 2}), key=key))
            await asyncio.gather(*sends)
            await asyncio.sleep(max(0.0, started + (start + chunk) / RATE - time.monotonic()))
    finally:
        await producer.stop()


async def sample_rss(service: ServiceProcess, samples: list[tuple[int, int]], every_s: float = 0.2) -> None:
    """(events consumed per the latest progress line, RSS bytes) every ``every_s`` while the child lives."""
    assert service.proc is not None
    while (rss := rss_bytes(service.proc.pid)) is not None:
        lines = progress_lines(service)
        samples.append((lines[-1]["events_consumed"] if lines else 0, rss))
        await asyncio.sleep(every_s)


async def test_flood_without_labels_keeps_join_bounded_and_memory_flat(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    service = start_service(
        max_pending=MAX_PENDING,
        label_ttl_s=LABEL_TTL_S,
        missing_label_policy="default",
        default_label=0,
        log_interval_s=0.2,
        session_timeout_ms=6000,  # a quicker group join on the embedded broker
    )
    await asyncio.to_thread(service.wait_for_log, "partitions_assigned", 60)
    samples: list[tuple[int, int]] = []
    sampling = asyncio.create_task(sample_rss(service, samples))
    started = time.monotonic()
    await flood(kafka_broker.bootstrap_servers, topics)
    flood_s = time.monotonic() - started
    # Everything read, and every waiting event and early label has expired (TTL) and trained (policy).
    await wait_for_progress(
        service,
        lambda p: p["events_consumed"] == EVENTS and p["labels_consumed"] == ORPHAN_LABELS
        and p["pending_events"] == 0 and p["early_labels"] == 0 and p["queued_examples"] == 0,
        "the flood read and expired",
        timeout=60,
    )
    lines = progress_lines(service)
    assert service.stop() == 0, service.log_tail()
    await sampling

    # The join never held more than MAX_PENDING events or early labels.
    peak_pending = max(p["pending_events"] for p in lines)
    peak_early = max(p["early_labels"] for p in lines)
    peak_queued = max(p["queued_examples"] for p in lines)
    assert peak_pending <= MAX_PENDING and peak_early <= MAX_PENDING
    # Dropped events trained with DEFAULT_LABEL while the flood ran, without a single label joined.
    mid_flood = [p for p in lines if p["events_consumed"] < EVENTS]
    assert max(p["examples_trained"] for p in mid_flood) > 0 and all(p["labels_joined"] == 0 for p in lines)

    shown = checkpoint_show(tmp_path / "checkpoints")
    loaded = CheckpointStore(tmp_path / "checkpoints", keep=1).load_latest()
    assert loaded is not None
    join = loaded.state["join"]["counters"]
    trained = loaded.state["trainer"]["counters"]
    assert shown["events_predicted"] == EVENTS and shown["labels_joined"] == 0 and shown["dead_lettered"] == 0
    assert shown["pending_events"] == shown["early_labels"] == 0
    # Every event left the join by eviction (beyond MAX_PENDING) or expiry (after LABEL_TTL_S), counted once.
    assert join["events_evicted"] + join["events_expired"] == EVENTS
    assert join["events_evicted"] > 0 and join["events_expired"] > 0
    assert join["labels_evicted"] + join["labels_expired"] == ORPHAN_LABELS
    assert join["labels_evicted"] > 0 and join["labels_expired"] > 0
    # ... and every dropped event was trained once with DEFAULT_LABEL (or skipped by a guardrail, counted).
    assert join["events_defaulted"] == EVENTS
    assert shown["examples_trained"] + trained["examples_skipped"] == EVENTS and shown["examples_trained"] > 0

    warm = [rss for consumed, rss in samples if consumed >= WARM_UP]
    assert len(warm) > 10, f"too few RSS samples after warm-up: {samples[-5:]}"
    mib = 1024 * 1024
    growth = max(warm) - warm[0]
    print(
        f"\nflood: {EVENTS} events + {ORPHAN_LABELS} orphan labels in {flood_s:.1f}s; peak pending {peak_pending}, "
        f"peak early labels {peak_early}, peak queued examples {peak_queued}; evicted/expired events "
        f"{join['events_evicted']}/{join['events_expired']}, labels {join['labels_evicted']}/{join['labels_expired']}; "
        f"trained {shown['examples_trained']} defaulted examples"
        f"\nRSS: start {samples[0][1] / mib:.1f} MiB, at warm-up ({WARM_UP} events) {warm[0] / mib:.1f} MiB, "
        f"peak after {max(warm) / mib:.1f} MiB, end {warm[-1] / mib:.1f} MiB: growth {growth / mib:.1f} MiB "
        f"(bound {RSS_GROWTH_BOUND / mib:.0f} MiB) over {len(warm)} samples"
    )
    assert growth < RSS_GROWTH_BOUND
