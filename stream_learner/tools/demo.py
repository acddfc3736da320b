"""``stream-learner demo``: an embedded broker, a drifting stream with delayed labels, and the service.

Prints a progress line every few seconds; accuracy climbs from chance, dips when the
concept drifts half-way, and recovers. ``stream-learner produce``
sends the same stream into a running cluster (the docker compose stack's producer).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from stream_learner.config import Settings
from stream_learner.service import Service
from stream_learner.stopping import sleep_unless_stopped
from stream_learner.tools.broker import EmbeddedBroker
from stream_learner.tools.client import EventProducer
from stream_learner.tools.synthetic import DriftingStream
from stream_learner.tools.topics import ensure_topics

TICK_S = 0.05


async def run_demo(options: argparse.Namespace) -> int:
    """Run the whole demo for ``options.duration`` seconds or until Ctrl-C; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with tempfile.TemporaryDirectory(prefix="stream-learner-demo-") as tmp, EmbeddedBroker() as broker:
        print(f"embedded Kafka-protocol broker (Tansu) on {broker.bootstrap_servers}")
        await ensure_topics(
            broker.bootstrap_servers, {"events": 4, "labels": 4, "predictions": 4, "stream-learner-dlq": 1}
        )
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            input_dim=options.input_dim,
            model=options.model,
            checkpoint_dir=options.checkpoint_dir or Path(tmp) / "checkpoints",
            checkpoint_interval_s=10,
            log_level="warning",
        )
        total = int(options.rate * options.duration)
        stream = DriftingStream(options.input_dim, drift_at=total // 2)
        service = Service(settings)
        serving = asyncio.create_task(service.run())
        producing = asyncio.create_task(
            _produce(broker.bootstrap_servers, stream, options.rate, options.label_delay, stop)
        )
        print(
            f"streaming {options.rate:.0f} events/s, labels {options.label_delay:.0f} s later, "
            f"concept drift at event {total // 2}"
        )
        await _report(service, options, stop, serving)
        stop.set()
        await producing
        service.stop()
        await serving
        _final(service)
    return 0


@dataclass
class ProducerProgress:
    """What :func:`produce_stream` has sent so far."""

    events: int = 0
    labels: int = 0


async def produce_stream(
    producer: EventProducer,
    stream: DriftingStream,
    rate: float,
    label_delay: float,
    stop: asyncio.Event,
    progress: ProducerProgress | None = None,
) -> ProducerProgress:
    """Send ``stream`` at ``rate`` events/s (``ts`` = send time), each label ``label_delay`` s after its
    event, until ``stop``.

    Sends are not awaited one by one: a failed delivery surfaces as DeliveryError on a later send
    or on the producer's flush. Labels still waiting when ``stop`` is set are not sent.
    """
    progress = progress or ProducerProgress()
    labels: deque[tuple[float, list[str], list[int]]] = deque()
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate) - progress.events
        if due > 0:
            batch = stream.batch(progress.events, due)
            await producer.send_events(batch.ids, batch.features, ts=time.time())
            labels.append((time.monotonic() + label_delay, batch.ids, batch.labels.tolist()))
            progress.events += due
        while labels and labels[0][0] <= time.monotonic():
            _, ids, values = labels.popleft()
            await producer.send_labels(ids, values)
            progress.labels += len(ids)
        await asyncio.sleep(TICK_S)
    return progress


async def _produce(
    bootstrap: str, stream: DriftingStream, rate: float, label_delay: float, stop: asyncio.Event
) -> None:
    async with EventProducer(bootstrap, input_dim=stream.input_dim, num_classes=2) as producer:
        await produce_stream(producer, stream, rate, label_delay, stop)


async def run_producer(options: argparse.Namespace, settings: Settings) -> int:
    """``stream-learner produce``: the demo's drifting stream into a running cluster, until SIGTERM/SIGINT
    or ``duration``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    drift_at = int(options.rate * options.drift_after) if options.drift_after > 0 else None
    stream = DriftingStream(settings.input_dim, seed=options.seed, drift_at=drift_at)
    progress = ProducerProgress()
    drift = f"concept drift at event {drift_at}" if drift_at is not None else "no concept drift"
    print(
        f"producing {options.rate:g} events/s to {settings.events_topic!r} on {settings.bootstrap_servers}, "
        f"labels {options.label_delay:g} s later to {settings.labels_topic!r}; {drift}",
        flush=True,
    )
    async with EventProducer.from_settings(settings) as producer:
        producing = asyncio.create_task(
            produce_stream(producer, stream, options.rate, options.label_delay, stop, progress)
        )
        started = time.monotonic()
        deadline = started + options.duration if options.duration > 0 else float("inf")
        while not producing.done():
            await asyncio.wait({producing}, timeout=max(0.0, min(options.report_every, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                stop.set()
                break
            if not producing.done():
                print(
                    f"{time.monotonic() - started:6.0f}s  events {progress.events}  labels {progress.labels}",
                    flush=True,
                )
        await producing
    print(f"done: {progress.events} events, {progress.labels} labels sent and acknowledged", flush=True)
    return 0


async def _report(
    service: Service, options: argparse.Namespace, stop: asyncio.Event, serving: asyncio.Task[None]
) -> None:
    started = last_time = time.monotonic()
    last_predicted = 0
    print(f"{'time':>6} {'events/s':>9} {'predicted':>10} {'joined':>8} {'accuracy':>9} {'version':>8} {'lag':>6}")
    while not stop.is_set() and not serving.done() and time.monotonic() - started < options.duration:
        await sleep_unless_stopped(stop, options.report_every)
        stats, now = service.status.stats(), time.monotonic()
        rate = (stats["events_predicted"] - last_predicted) / max(now - last_time, 1e-9)
        last_predicted, last_time = stats["events_predicted"], now
        accuracy = stats["prequential_recent_accuracy"]
        shown = "-" if accuracy is None else f"{accuracy:9.1%}"
        print(
            f"{now - started:5.0f}s {rate:9.0f} {stats['events_predicted']:10d} {stats['labels_joined']:8d} "
            f"{shown:>9} {stats['model_version']:8d} {stats['lag']:6d}",
            flush=True,
        )


def _final(service: Service) -> None:
    stats = service.status.stats()
    print(
        f"done: {stats['events_predicted']} events predicted, {stats['labels_joined']} labels joined, "
        f"{stats['examples_trained']} examples trained in {stats['model_version']} steps; "
        f"cumulative prequential accuracy {_percent(stats['prequential_accuracy'])}, "
        f"last window {_percent(stats['prequential_recent_accuracy'])}; "
        f"final checkpoint: {service.checkpoint.last.get('path')}"
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
