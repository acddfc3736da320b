"""Profile the service in catch-up: pre-fill, then run one catch-up with the sampling profiler.

    .venv/bin/py-spy record --threads --idle -r 250 -f raw -o /tmp/catchup.txt -- \\
        .venv/bin/python -m benchmarks.profile --events 200000 --model linear --batch 256 [--kafka-client librdkafka]
    .venv/bin/python -m benchmarks.profile --summarize /tmp/catchup.txt

The summary counts only samples taken while the service ran (stacks through
``Service.run`` and the device thread), per function: self time, and time
including callees.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import tempfile
from pathlib import Path

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics

from .common import PARTITIONS, make_stream, prefill
from .run import DLQ, _name, _quiet_logs, passthrough_catch_up, service_catch_up


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        events, labels = _name("events"), _name("labels")
        await ensure_topics(bootstrap, {events: PARTITIONS, labels: PARTITIONS, DLQ: 1})
        await prefill(bootstrap, make_stream(args.events), events, labels)
        if args.passthrough:
            result = await passthrough_catch_up(bootstrap, events, args.events, Path(tmp))
        else:
            result = await service_catch_up(
                bootstrap, events, labels, args.events, args.model, args.batch, Path(tmp), args.train_batch,
                kafka_client=args.kafka_client,
            )
        print(result, file=sys.stderr)


FRAME = re.compile(r"^(?P<fn>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def summarize(path: Path, top: int, marker: str) -> None:
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith(marker) for f in frames) and "stream-learner-device" not in frames[0]:
            continue
        count = int(count_text)
        total += count
        threads[frames[0]] += count
        names = []
        for f in frames[1:]:
            m = FRAME.match(f)
            names.append(f"{m['fn']} ({Path(m['file']).name})" if m else f)
        if names:
            self_counts[names[-1]] += count
        for name in set(names):
            total_counts[name] += count
    print(f"{total} samples while the service ran")
    for t, c in threads.most_common():
        print(f"  {100 * c / total:5.1f}%  {t}")
    print("\nself time:")
    for name, c in self_counts.most_common(top):
        print(f"  {100 * c / total:5.1f}%  {name}")
    print("\nincluding callees:")
    for name, c in total_counts.most_common(top):
        print(f"  {100 * c / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--model", default="linear")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--passthrough", action="store_true", help="profile the pass-through instead")
    parser.add_argument("--kafka-client", default="aiokafka", choices=["aiokafka", "librdkafka"])
    parser.add_argument("--summarize", type=Path, help="summarize a py-spy raw file instead of running")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.top, "passthrough (" if args.passthrough else "Service.run (")
        return
    _quiet_logs()
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
