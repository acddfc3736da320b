"""Reading the models topic's one partition: where it ends, a range of it, and the newest whole version.

The newest version is found from the end, never by replaying the topic: the last record names its
chunk, so the version's first record is that many offsets back. A version that cannot be used is
skipped for the one before it, up to ``LOOKBACK`` versions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_learner.config import Settings
from stream_learner.kafka.clients import security_kwargs
from stream_learner.model_versions.record import (
    MAX_CHUNK_BYTES,
    BadVersionError,
    ModelVersion,
    VersionAssembler,
    read_info,
)
from stream_learner.stopping import sleep_unless_stopped

log = structlog.get_logger(__name__)
LOOKBACK = 16
"""Versions tried from the end before the topic counts as holding none that can be used."""
READ_TIMEOUT_S = 10.0
RETRY_S = 2.0


class ModelsTopic:
    """A consumer of the models topic outside any group, reading where it is told."""

    def __init__(self, settings: Settings) -> None:
        self.tp = TopicPartition(settings.models_topic, 0)
        self._settings = settings
        self._started: AIOKafkaConsumer | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._started is not None, "start() first"
        return self._started

    def _consumer(self) -> AIOKafkaConsumer:
        s = self._settings
        return AIOKafkaConsumer(
            **security_kwargs(s),
            bootstrap_servers=s.bootstrap_servers,
            client_id=s.client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * MAX_CHUNK_BYTES,
            fetch_max_wait_ms=200,
        )

    async def start(self, stop: asyncio.Event) -> bool:
        """Start reading once the broker answers and the topic exists (logged while waiting); False if stopped first."""
        while not stop.is_set():
            self._started = self._consumer()
            try:
                await self.consumer.start()
                if self.tp.topic in await self.consumer.topics():
                    self.consumer.assign([self.tp])
                    return True
                log.warning("models_topic_missing", topic=self.tp.topic, retry_in_s=RETRY_S)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                log.warning("models_topic_unreachable", error=f"{type(exc).__name__}: {exc}", retry_in_s=RETRY_S)
            await self.consumer.stop()
            await sleep_unless_stopped(stop, RETRY_S)
        return False

    async def stop(self) -> None:
        if self._started is not None:
            await self._started.stop()

    async def end(self) -> int:
        """The partition's high watermark (one fetch from its start: the broker reports it with any fetch)."""
        self.consumer.seek(self.tp, 0)
        async with asyncio.timeout(READ_TIMEOUT_S):
            while (high := self.consumer.highwater(self.tp)) is None:
                await self.consumer.getmany(self.tp, timeout_ms=200, max_records=1)
        return int(high)

    async def read(self, start: int, end: int) -> list[Any]:
        """The records at offsets ``[start, end)`` (fewer where retention removed some)."""
        self.consumer.seek(self.tp, max(start, 0))
        records: list[Any] = []
        async with asyncio.timeout(READ_TIMEOUT_S):
            while await self.consumer.position(self.tp) < end:
                fetched = await self.consumer.getmany(self.tp, timeout_ms=200)
                records += [r for r in fetched.get(self.tp, ()) if r.offset < end]
        return records

    def follow_from(self, offset: int) -> None:
        """Read on from ``offset`` with :meth:`poll`."""
        self.consumer.seek(self.tp, offset)

    async def poll(self, timeout_s: float) -> list[Any]:
        fetched = await self.consumer.getmany(self.tp, timeout_ms=int(timeout_s * 1000))
        return list(fetched.get(self.tp, ()))

    async def newest(self, rejected: list[str]) -> tuple[ModelVersion | None, int]:
        """The newest version that can be used (None if none) and the end offset; reasons for the versions
        skipped on the way are appended to ``rejected``."""
        end = await self.end()
        last = end - 1
        for _ in range(LOOKBACK):
            if last < 0:
                break
            tail = await self.read(last, last + 1)
            if not tail:
                break
            first = last
            try:
                first = last - read_info(tail[0].headers).chunk
                earlier = await self.read(first, last) if first < last else []  # the tail is read already
                version = _assemble(earlier + tail)
                if version is not None:
                    return version, end
                rejected.append(f"the version ending at offset {last} is missing chunks")
            except BadVersionError as exc:
                rejected.append(f"offset {last}: {exc}")
            last = first - 1
        return None, end


def _assemble(records: list[Any]) -> ModelVersion | None:
    assembler, version = VersionAssembler(), None
    for record in records:
        version = assembler.add(record.value, record.headers) or version
    return version
