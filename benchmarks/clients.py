"""The two Kafka clients' ceilings, in one run: the bare pass-through on aiokafka and on librdkafka, beside the service.

N pre-filled events (dim 32, 4 partitions) and a label for each, on an embedded broker of its own.
Alternately, ``--repeats`` times: the aiokafka pass-through (:mod:`benchmarks.passthrough`), the
librdkafka pass-through (:mod:`benchmarks.passthrough_librdkafka`), and the service's catch-up on
each client (``KAFKA_CLIENT``; ``ROLE=all``, in-process, training every label) at the default
``MAX_BATCH_SIZE`` (256) and at 1024, per model, and with ``DELIVERY=exactly_once`` on librdkafka
at the default checkpoint interval and at 1 s. Each reads the events in a group
of its own and writes to a topic of its own; its rate is events over the span of its output
records' Kafka timestamps (the service's: up to its last optimizer step too). The table gives the
medians and the ratios of the medians.

    .venv/bin/python -m benchmarks.clients
    .venv/bin/python -m benchmarks.clients --events 5000 --repeats 1     # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics

from .common import DLQ, PARTITIONS, bench_settings, make_stream, output_window, prefill, quiet_logs, report, unique_name
from .passthrough_librdkafka import passthrough_librdkafka
from .run import machine, passthrough_catch_up, service_catch_up


async def librdkafka_catch_up(bootstrap: str, events: str, n: int, tmp: Path) -> dict[str, Any]:
    outputs = unique_name("passthrough")
    await ensure_topics(bootstrap, {outputs: PARTITIONS})
    await passthrough_librdkafka(bench_settings(bootstrap, events, unique_name("labels"), outputs, "linear", 1, tmp), n)
    return await output_window(bootstrap, outputs, n)


async def measure(n: int, repeats: int, models: list[str], batches: list[int], tmp: Path) -> dict[str, list[float]]:
    runs: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        events, labels = unique_name("events"), unique_name("labels")
        await ensure_topics(bootstrap, {DLQ: 1, events: PARTITIONS, labels: PARTITIONS})
        await prefill(bootstrap, make_stream(n), events, labels)
        runs["aiokafka pass-through"] = lambda: passthrough_catch_up(bootstrap, events, n, tmp)
        runs["librdkafka pass-through"] = lambda: librdkafka_catch_up(bootstrap, events, n, tmp)
        for model in models:
            for batch in batches:
                for client in ("aiokafka", "librdkafka"):
                    runs[f"service on {client}, {model}, batch {batch}"] = (
                        lambda m=model, b=batch, c=client: service_catch_up(  # type: ignore[misc]
                            bootstrap, events, labels, n, m, b, tmp, kafka_client=c
                        )
                    )
        for model in models:
            for interval in (30.0, 1.0):  # the default CHECKPOINT_INTERVAL_S, and one transaction a second
                runs[f"service on librdkafka, exactly_once, {model}, batch 256, checkpoint every {interval:g} s"] = (
                    lambda m=model, i=interval: service_catch_up(  # type: ignore[misc]
                        bootstrap, events, labels, n, m, 256, tmp, kafka_client="librdkafka",
                        delivery="exactly_once", checkpoint_interval_s=i,
                    )
                )
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                rate = (await run())["rate"]
                rates[name].append(rate)
                print(f"{name}: {rate:,.0f} events/s", file=sys.stderr, flush=True)
    return rates


def render(rates: dict[str, list[float]], n: int) -> str:
    librdkafka = statistics.median(rates["librdkafka pass-through"])
    aiokafka = statistics.median(rates["aiokafka pass-through"])
    lines = [
        f"Catch-up over {n:,} pre-filled events (dim 32, {PARTITIONS} partitions); medians of {len(rates[next(iter(rates))])} runs",
        "",
        "| what | events/s, median (runs) | / aiokafka pass-through | / librdkafka pass-through | librdkafka / aiokafka (exactly_once / at least once) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in rates.items():
        median = statistics.median(values)
        each = ", ".join(f"{v:,.0f}" for v in values)
        paired = rates.get(name.replace("on librdkafka", "on aiokafka")) if "on librdkafka" in name else None
        if "exactly_once" in name:  # against at least once on the same client
            paired = rates.get(name.split(", checkpoint")[0].replace(", exactly_once", ""))
        ratio = f"{median / statistics.median(paired):.2f}×" if paired else ""
        lines.append(
            f"| {name} | {median:,.0f} ({each}) | {median / aiokafka:.2f}× | {median / librdkafka:.2f}× | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="linear,mlp")
    parser.add_argument("--batches", default="256,1024", help="MAX_BATCH_SIZE values of the service's runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp:
        batches = [int(b) for b in args.batches.split(",")]
        rates = asyncio.run(measure(args.events, args.repeats, args.models.split(","), batches, Path(tmp)))
    report(render(rates, args.events), {"rates": rates}, f"# Kafka clients' ceilings ({machine()})", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
