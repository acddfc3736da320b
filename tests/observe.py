"""Watching a service child from outside: topics read to their end, the group's committed
offsets, progress log lines, resident memory. Nothing here joins the service's group."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .service_process import ServiceProcess

BIG_FETCH = 16 * 1024 * 1024  # as the service's consumer: a 5 MB record comes back whole


async def read_to_end(bootstrap: str, topic: str, timeout: float = 30.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its high watermarks (call it once nothing writes to ``topic`` any more).

    The watermarks come from fetch responses: the embedded Tansu broker answers ListOffsets
    (``end_offsets``) with the base offset of the last record batch plus one, not the end.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=BIG_FETCH,
        fetch_max_bytes=4 * BIG_FETCH,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        left = set(partitions)
        while left:
            assert time.monotonic() < deadline, f"{topic}: {sorted(left)} not read to their end within {timeout}s"
            for batch in (await consumer.getmany(*left, timeout_ms=100)).values():
                records.extend(batch)
            left = {tp for tp in left if (high := consumer.highwater(tp)) is None or await consumer.position(tp) < high}
        return records
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topics: dict[str, int]) -> dict[TopicPartition, int]:
    """The group's committed offsets (-1: none) for every partition of ``topics``, read with the admin
    client so that the service's group is not joined or disturbed (Tansu needs the partitions named)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        found = await admin.list_consumer_group_offsets(group, partitions=partitions)
        return {tp: (found[tp].offset if tp in found else -1) for tp in partitions}
    finally:
        await admin.close()


def as_offsets(checkpoint_offsets: dict[str, dict[Any, int]], topics: dict[str, int]) -> dict[TopicPartition, int]:
    """A checkpoint's ``offsets`` (topic -> partition -> next offset) over every partition of ``topics``, -1 where absent."""
    return {
        TopicPartition(t, p): int({int(k): v for k, v in checkpoint_offsets.get(t, {}).items()}.get(p, -1))
        for t, n in topics.items()
        for p in range(n)
    }


def progress_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") == "progress"]


async def wait_for_progress(
    service: ServiceProcess, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
) -> dict[str, Any]:
    """The first progress line (from now on, newest first) for which ``done`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = progress_lines(service)
        if lines and done(lines[-1]):
            return lines[-1]
        assert service.alive(), f"service exited while waiting for {what}:\n{service.log_tail()}"
        await asyncio.sleep(0.2)
    last = progress_lines(service)[-1:] or ["no progress line"]
    raise AssertionError(f"{what} not reached within {timeout}s; last progress: {last[0]}\n{service.log_tail()}")


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (VmRSS in /proc/<pid>/status); None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None  # a zombie: exited, not yet reaped
