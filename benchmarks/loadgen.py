"""Paced load for the latency benchmark, run as its own process so its work stays off the
measured process: produces events at a fixed rate (each stamped with ``ts`` = the wall-clock
time it is handed to the producer), their labels ``label_delay`` seconds later, and reads
the output topic, where each record echoes its event's ``ts``.

Prints a ``{"phase": ...}`` line when pacing starts and one when it ends, then one JSON
object: latencies (event produced -> output received) of the events produced after the
warm-up; ``to_created``, the part of them up to the output record's Kafka timestamp
(CreateTime, stamped by the measured process's producer as it hands the record over);
counts, and the CPU cores this process used while pacing.

    python -m benchmarks.loadgen --bootstrap 127.0.0.1:9092 --events e --labels l --outputs p --rate 10000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import deque

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from .common import make_stream, percentiles, produce_batched

TICK_S = 0.002


async def _receive(
    consumer: AIOKafkaConsumer, measured_from: float, out: list[float], created: list[float], counts: dict[str, int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        fetched = await consumer.getmany(timeout_ms=20, max_records=10_000)
        received = time.time()
        for records in fetched.values():
            for record in records:
                ts = orjson.loads(record.value)["ts"]
                counts["received"] += 1
                if ts >= measured_from:
                    out.append(received - ts)
                    created.append(record.timestamp / 1000 - ts)


def _mark(phase: str) -> None:
    """A line for the parent, which times its own and the broker's CPU over the paced window."""
    sys.stdout.write(orjson.dumps({"phase": phase}).decode() + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> dict[str, object]:
    total = int(args.rate * args.duration)
    stream = make_stream(total, seed=11)
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=1, acks=1, max_batch_size=512 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=5)
    await producer.start()
    await consumer.start()
    try:
        parts = sorted(consumer.partitions_for_topic(args.outputs) or ())
        tps = [TopicPartition(args.outputs, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        latencies: list[float] = []
        created: list[float] = []
        counts = {"received": 0}
        stop = asyncio.Event()
        started = time.time()
        receiving = asyncio.create_task(_receive(consumer, started + args.warmup, latencies, created, counts, stop))
        labels: deque[tuple[float, int, int]] = deque()
        _mark("producing")
        cpu0 = time.process_time()
        sent, t0 = 0, time.monotonic()
        futures = []
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * args.rate)) - sent
            if due > 0:
                now = time.time()
                items = ((int(stream.partitions[i]), stream.keys[i], stream.event_value(i, now), None) for i in range(sent, sent + due))
                futures += await produce_batched(producer, args.events, items)
                labels.append((time.monotonic() + args.label_delay, sent, sent + due))
                sent += due
            while labels and labels[0][0] <= time.monotonic():
                _, a, b = labels.popleft()
                items = ((int(stream.partitions[i]), stream.keys[i], stream.label_value(i), None) for i in range(a, b))
                futures += await produce_batched(producer, args.labels, items)
            futures = [f for f in futures if not f.done()]
            await asyncio.sleep(TICK_S)
        produced_for = time.monotonic() - t0
        cores = (time.process_time() - cpu0) / produced_for
        _mark("produced")
        while labels:
            _, a, b = labels.popleft()
            items = ((int(stream.partitions[i]), stream.keys[i], stream.label_value(i), None) for i in range(a, b))
            futures += await produce_batched(producer, args.labels, items)
        await asyncio.gather(*futures)
        deadline = time.monotonic() + args.drain_s
        while counts["received"] < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await receiving
    finally:
        await consumer.stop()
        await producer.stop()
    lat = np.asarray(latencies)
    return {
        "produced": total,
        "received": counts["received"],
        "rate": total / produced_for,
        "measured": int(lat.size),
        "cores": cores,
        **percentiles(lat),
        "to_created": percentiles(np.asarray(created)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--outputs", required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of producing")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of events left out of the figures")
    parser.add_argument("--label-delay", type=float, default=1.0, help="seconds between an event and its label")
    parser.add_argument("--drain-s", type=float, default=15.0, help="how long to wait for the last outputs")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
