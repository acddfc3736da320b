"""The trainer's side of the models topic: publishing a version, only while it leads.

A version is published every ``MODEL_PUBLISH_INTERVAL_S`` while the weights change (in the background:
the loop never waits for it), and after every durable checkpoint (its weights, ``durable``). Each
publication first confirms the leadership (:meth:`~.election.Election.confirm`); a deposed trainer's
publication raises :class:`~stream_learner.errors.LeadershipLostError` instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
import torch
from aiokafka import AIOKafkaProducer

from stream_learner.errors import LeadershipLostError
from stream_learner.model_versions.election import Election
from stream_learner.model_versions.record import Offsets, encode_version

log = structlog.get_logger(__name__)
Failed = Callable[[Exception], None]


class ModelPublisher:
    """Publishes model versions to the one partition of the models topic."""

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, election: Election, spec: dict[str, Any], interval_s: float
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._election = election
        self._spec = spec
        self._interval_s = interval_s
        self._next = 0.0
        self._published: int | None = None
        self._running: asyncio.Task[None] | None = None
        self._one_at_a_time = asyncio.Lock()
        """Versions go out whole and in order: a version's chunks never interleave with another's."""
        self.counts = {"published": 0}
        """Versions published by this process."""
        self._last_at: float | None = None

    def due(self, step: int) -> bool:
        """The weights changed since the last version, the interval passed, and none is being published."""
        idle = self._running is None or self._running.done()
        return idle and step != self._published and time.monotonic() >= self._next

    def publish_in_background(
        self, weights: dict[str, torch.Tensor], step: int, offsets: Offsets, failed: Failed
    ) -> None:
        """Publish without waiting; ``failed`` gets a :class:`LeadershipLostError` (anything else is logged)."""
        self._next = time.monotonic() + self._interval_s
        self._running = asyncio.create_task(self._publish_reporting(weights, step, offsets, failed))

    async def _publish_reporting(
        self, weights: dict[str, torch.Tensor], step: int, offsets: Offsets, failed: Failed
    ) -> None:
        try:
            await self.publish(weights, step, offsets, durable=False)
        except LeadershipLostError as exc:
            failed(exc)
        except Exception as exc:  # noqa: BLE001 - a missed version is followed by the next
            log.warning("model_publish_failed", step=step, error=f"{type(exc).__name__}: {exc}")

    async def publish(self, weights: dict[str, torch.Tensor], step: int, offsets: Offsets, *, durable: bool) -> None:
        """Confirm the leadership, then produce the version's records and await their acknowledgement."""
        async with self._one_at_a_time:
            if durable and step == self._published:
                return  # these weights are out already
            await self._send(weights, step, offsets, durable)

    async def _send(self, weights: dict[str, torch.Tensor], step: int, offsets: Offsets, durable: bool) -> None:
        generation = self._election.generation
        records = await asyncio.to_thread(
            encode_version, weights, generation, step, trained_through=offsets, spec=self._spec, durable=durable
        )
        await self._election.confirm()  # after encoding: the window between the fence and the send stays small
        deliveries = [
            await self._producer.send(self._topic, value, key=key, headers=headers, partition=0)
            for key, value, headers in records
        ]
        await asyncio.gather(*deliveries)
        self._published, self._last_at = step, time.time()
        self.counts["published"] += 1
        log.debug("model_published", generation=generation, step=step, durable=durable, records=len(records))

    def generation(self) -> int | None:
        return self._election.generation or None

    def age_s(self) -> float | None:
        """Seconds since the last version was published (None before the first)."""
        return None if self._last_at is None else time.time() - self._last_at

    def ready(self) -> bool:
        return self._election.generation > 0

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.wait([self._running])
