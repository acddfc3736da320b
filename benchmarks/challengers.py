"""What challengers cost: the service's catch-up with ``CHALLENGERS`` beside the same catch-up without, in one run.

N pre-filled events (dim 32, 4 partitions) and a label for each, on an embedded broker of its own;
``Service`` in-process (``ROLE=all``, the defaults otherwise), timed from the first events read to the
later of the last optimizer step and the last prediction's timestamp, every label stepped (as
``benchmarks.scale_out``'s trainer part). Each configuration with challengers runs ``--repeats`` times,
each run between two runs of the single default model; the ratio is the median of each run's ratio to
the mean of the single-model runs on either side.

    .venv/bin/python -m benchmarks.challengers
    .venv/bin/python -m benchmarks.challengers --events 5000 --repeats 1 --models linear    # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics

from .common import DLQ, PARTITIONS, make_stream, prefill, quiet_logs, report, unique_name
from .run import machine
from .scale_out import Run, learner_catch_up, sandwich, spread

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "CHALLENGERS=learning_rates (3 models, champion serves)": {"challengers": "learning_rates"},
    "CHALLENGERS=learning_rates, SELECTION=average": {"challengers": "learning_rates", "selection": "average"},
}


async def measure(model: str, events_n: int, repeats: int, tmp: Path, log: Callable[[str], None]) -> dict[str, Run]:
    stream, results = make_stream(events_n), {}
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        events, labels = unique_name("events"), unique_name("labels")
        await ensure_topics(bootstrap, {DLQ: 1, events: PARTITIONS, labels: PARTITIONS})
        await prefill(bootstrap, stream, events, labels)

        def runner(name: str, extra: dict[str, Any]) -> Callable[[], Awaitable[Run]]:
            async def run() -> Run:
                result = await learner_catch_up(bootstrap, "all", events, labels, events_n, model, tmp, **extra)
                log(f"{model}, {name}: {result['rate']:,.0f} events+labels/s, {result['trained']:,} trained")
                return result

            return run

        for name, extra in CONFIGURATIONS.items():
            results[name] = await sandwich(runner(name, extra), runner("one model", {}), repeats)
    return results


def render(results: dict[str, dict[str, Run]], events_n: int) -> str:
    lines = [
        f"Catch-up over {events_n:,} events and their labels, defaults otherwise; ratio to the single default model",
        "",
        "| model | configuration | events+labels/s | one model, events+labels/s | ratio (min–max) |",
        "|---|---|---:|---:|---:|",
    ]
    for model, by_name in results.items():
        for name, run in by_name.items():
            lines.append(
                f"| {model} | {name} | {run['rate']:,.0f} | {run['reference_rate']:,.0f} | "
                f"{spread(run)} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="linear,mlp")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    quiet_logs()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[str, dict[str, Run]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            results[model] = asyncio.run(measure(model, args.events, args.repeats, Path(tmp), log))
    report(render(results, args.events), {"results": results}, f"# Challengers' cost ({machine()})", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
