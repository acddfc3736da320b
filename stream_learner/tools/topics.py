"""Topic provisioning and a readiness probe, against any Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap_servers: str,
    topics: dict[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> None:
    """Create the topics in ``topics`` (name -> partition count) that do not exist yet.

    Existing topics are left as they are (their partition count is not checked or
    changed); a concurrent creator winning the race is not an error. Returns once
    every named topic appears in the cluster metadata with all its partitions led.
    Other creation errors are raised as the matching ``aiokafka.errors`` exception.
    The admin client is always closed.
    """
    if not topics:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            for topic, code, *rest in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = rest[0] if rest else None
                    raise for_code(code)(f"creating topic {topic!r}: {message}")
        await _wait_visible(admin, list(topics), time.monotonic() + timeout_s)
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        described = await admin.describe_topics(names)
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0
            and t["partitions"]
            and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
        }
        if ready.issuperset(names):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not visible in metadata: {sorted(set(names) - ready)}")
        await asyncio.sleep(0.1)


async def cluster_answers(bootstrap_servers: str, timeout_s: float) -> bool:
    """Whether the brokers at ``bootstrap_servers`` answer a metadata request within ``timeout_s``."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        await admin.close()
