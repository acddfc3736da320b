"""The predictor's side of the models topic: the newest good version, ready to swap in.

At start the newest version is read from the end of the topic (never by replaying it); then the
topic is followed. A version is offered only if its ``(generation, step)`` is greater than the one
served (a deposed trainer's late versions are ignored), its payload matches its sha256, it loads with
``weights_only=True`` and its tensors fit the model's (names, shapes, dtypes) and spec. Anything else
is logged, counted and skipped: the served model stays. Loading runs in a worker thread; the predictor
swaps the loaded weights in between micro-batches (:meth:`ModelFeed.take`), so no prediction waits for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from stream_learner.model_versions.models_topic import ModelsTopic
from stream_learner.model_versions.record import BadVersionError, ModelVersion, VersionAssembler, VersionInfo

log = structlog.get_logger(__name__)
POLL_S = 1.0


@dataclass(frozen=True)
class LoadedVersion:
    info: VersionInfo
    weights: dict[str, torch.Tensor]


class ModelFeed:
    """Follows the models topic; :meth:`take` hands over each newer good version once."""

    def __init__(self, topic: ModelsTopic, expected: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
        self._topic = topic
        self._expected = {name: (tuple(t.shape), t.dtype) for name, t in expected.items()}
        self._spec = spec
        self._ready: LoadedVersion | None = None
        self._first = asyncio.Event()
        self.newest: VersionInfo | None = None
        """The newest version offered (served once the predictor takes it)."""
        self.counts: Counter[str] = Counter(loaded=0, rejected=0, ignored=0)
        """Versions by outcome: loaded, rejected (could not be used), ignored (not newer)."""

    async def start(self, stop: asyncio.Event) -> bool:
        """Connect once the broker answers and the topic exists; False when stopped first."""
        return await self._topic.start(stop)

    async def close(self) -> None:
        await self._topic.stop()

    async def run(self) -> None:
        """Find the newest version, then follow the topic (until cancelled)."""
        rejected: list[str] = []
        version, end = await self._topic.newest(rejected)
        for reason in rejected:
            self._reject(reason)
        if version is not None:
            await self._offer(version)
        self._topic.follow_from(end)
        assembler = VersionAssembler()
        while True:
            newest: ModelVersion | None = None
            for record in await self._topic.poll(POLL_S):
                try:
                    version = assembler.add(record.value, record.headers)
                except BadVersionError as exc:
                    self._reject(f"offset {record.offset}: {exc}")
                    continue
                if version is not None:
                    if newest is not None:
                        self.counts["ignored"] += 1  # another came in the same poll; the greater one is offered
                    if newest is None or version.info.order > newest.info.order:
                        newest = version
            if newest is not None:
                await self._offer(newest)

    async def first(self) -> None:
        """Wait until a version is ready."""
        await self._first.wait()

    def take(self) -> LoadedVersion | None:
        """The version to serve next, once (None when there is none newer)."""
        ready, self._ready = self._ready, None
        return ready

    async def _offer(self, version: ModelVersion) -> None:
        info = version.info
        if self.newest is not None and info.order <= self.newest.order:
            self.counts["ignored"] += 1
            log.info("model_version_ignored", generation=info.generation, step=info.step, serving=self.newest.order)
            return
        try:
            weights = await asyncio.to_thread(version.weights)
            self._check(info, weights)
        except BadVersionError as exc:
            self._reject(f"version {info.order}: {exc}")
            return
        new_generation = self.newest is None or self.newest.generation != info.generation
        self._ready, self.newest = LoadedVersion(info, weights), info
        self.counts["loaded"] += 1
        self._first.set()
        age_s = round(max(time.time() - info.created_at, 0.0), 3)
        report = log.info if new_generation else log.debug  # one line per trainer generation, not per version
        report("model_version_loaded", generation=info.generation, step=info.step, age_s=age_s)

    def _check(self, info: VersionInfo, weights: dict[str, torch.Tensor]) -> None:
        if info.spec != self._spec:
            raise BadVersionError(f"made for another model (version: {info.spec}, predictor: {self._spec})")
        found = {name: (tuple(t.shape), t.dtype) for name, t in weights.items()}
        if found != self._expected:
            raise BadVersionError("its tensors do not fit the model (names, shapes or dtypes differ)")

    def _reject(self, reason: str) -> None:
        self.counts["rejected"] += 1
        log.warning("model_version_rejected", reason=reason)

    def generation(self) -> int | None:
        return None if self.newest is None else self.newest.generation

    def ready(self) -> bool:
        return self.newest is not None

    def age_s(self) -> float | None:
        """Seconds since the newest version was made (None before the first)."""
        return None if self.newest is None else max(time.time() - self.newest.created_at, 0.0)
