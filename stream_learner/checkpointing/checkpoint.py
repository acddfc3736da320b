"""The Checkpoint: what is safe to commit, when a cut is due, and the protocol that takes one.

The invariant it keeps: for every partition of the events and labels topics it has read,
``offsets[tp]`` is the first offset whose effect is not in the state a cut would save. A
checkpoint file holds that state and those offsets together, so a restore that reads on from
them trains every label exactly once. docs/architecture.md explains why each step is needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import TopicPartition

from stream_learner.checkpointing.restore import checkpoint_to_restore
from stream_learner.checkpointing.store import CheckpointStore, LoadedCheckpoint, by_topic, from_topics
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError, LeadershipLostError
from stream_learner.observability.telemetry import Telemetry

log = structlog.get_logger(__name__)
RETRY_S = 5.0
"""How soon a checkpoint that could not be written is tried again."""

Offsets = dict[TopicPartition, int]


async def _nothing() -> None:
    return None


async def _nothing_with(state: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class CutSteps:
    """What the Checkpoint asks of the rest of the service while it takes a cut."""

    drain: Callable[[], Awaitable[None]]
    """Step 2: predict every batched event, finish every queued step, await every delivery."""
    snapshot: Callable[[], Awaitable[dict[str, Any]]]
    """Step 3: every component's state, taken on the device thread."""
    commit_offsets: Callable[[Offsets], Awaitable[None]]
    """Step 5: the offsets to Kafka (with exactly_once, in the transaction of everything produced)."""
    failed: Callable[[Exception], None]
    """A background write (steps 4 to 6) failed: the service must fail."""
    fence: Callable[[], Awaitable[None]] = _nothing
    """Step 4, first: a trainer confirms it still leads (:class:`LeadershipLostError` if it does not)."""
    published: Callable[[dict[str, Any]], Awaitable[None]] = _nothing_with
    """Step 6: a trainer publishes the weights of the durable cut as a model version."""


class Checkpoint:
    """Owns the next offset of every partition read, and commits them only inside a durable cut."""

    def __init__(
        self, store: CheckpointStore, interval_s: float, steps: CutSteps, telemetry: Telemetry, *, background: bool
    ) -> None:
        self.store = store
        self.offsets: Offsets = {}
        """The next offset to read, per partition: the first one whose effect is not in the state."""
        self.lock = asyncio.Lock()
        """Held by whatever changes state: holding it is step 1 (intake stops)."""
        self.last: dict[str, Any] = {}
        """The last checkpoint written by this process: path, reason, at."""
        self.last_at = time.time()
        self.interval_s = interval_s
        self._steps = steps
        self._telemetry = telemetry
        self._background = background
        self._dirty = False
        self._next_due = time.monotonic() + interval_s
        self._writing: asyncio.Task[None] | None = None
        self._taken = 0
        self._abandoned = False

    def store_offset(self, tp: TopicPartition, offset: int) -> None:
        """Record that every record of ``tp`` below ``offset`` is accounted for; refuses to go backwards."""
        current = self.offsets.get(tp)
        if current is not None and offset < current:
            raise CheckpointError(f"offset of {tp.topic}[{tp.partition}] would go back from {current} to {offset}")
        self.offsets[tp] = offset

    def touch(self) -> None:
        """The state changed: the next interval takes a cut."""
        self._dirty = True

    @property
    def dirty(self) -> bool:
        """Something changed since the last cut."""
        return self._dirty

    def due(self) -> bool:
        """Something changed, the interval passed, and the last cut's background write is done (never after
        :meth:`abandon`)."""
        writing = self._writing is not None and not self._writing.done()
        return self._dirty and time.monotonic() >= self._next_due and not writing and not self._abandoned

    async def commit(self, reason: str, *, wait: bool = True) -> bool:
        """Take a checkpoint; False when it could not be written (nothing is committed then; retried soon).

        1. Stop intake: the caller holds :attr:`lock`, so no fetched record enters the pipeline.
        2. Drain: every batched event predicted, every queued step done, every delivery acknowledged.
        3. Snapshot on the device thread: each component's ``state_dict()`` and these offsets.
        4. Write atomically (a trainer first confirms it leads): temp file, fsync, rename, fsync the directory.
        5. Commit the same offsets to Kafka.
        6. Prune checkpoints beyond ``KEEP_CHECKPOINTS``; a trainer publishes the cut's weights.
        7. Resume intake: the caller releases :attr:`lock`.

        Steps 4 to 6 run in the background when ``wait`` is false and the writes may (at-least-once),
        on the snapshot already taken; they finish before the next cut's step 2, so cuts are written
        and committed in order.
        """
        if not self.lock.locked() or self._abandoned:
            raise CheckpointError(
                "a checkpoint is taken with intake stopped (hold Checkpoint.lock), never after a failure"
            )
        await self.finish_writing()
        started = time.monotonic()
        self._taken += 1
        # Step 1. Stop intake: the lock is held (checked above).
        # Step 2. Drain.
        await self._steps.drain()
        self._reached("drained")
        # Step 3. Snapshot, with the offsets of the same moment.
        state = await self._steps.snapshot()
        state["offsets"] = by_topic(self.offsets)
        self._reached("snapshot")
        self._dirty = False
        self._next_due = time.monotonic() + self.interval_s
        # Steps 4 to 6. Write, commit, prune: now, or in the background.
        if wait or not self._background:
            written = await self._persist(state, reason, started)
        else:
            self._writing, written = asyncio.create_task(self._persist_in_background(state, reason, started)), True
        # Step 7. Resume intake: the caller releases the lock.
        self._telemetry.intake_paused(time.monotonic() - started)
        return written

    async def _persist(self, state: dict[str, Any], reason: str, started: float) -> bool:
        """Steps 4 to 6 of a cut of ``state``; False when it could not be written."""
        # Step 4. Write atomically; on failure keep serving and retry soon, committing nothing.
        try:
            await self._steps.fence()
            path = await asyncio.to_thread(self.store.write, state, before_rename=lambda: self._reached("written_temp"))
        except LeadershipLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the disk did (ENOSPC surfaces from torch as a RuntimeError)
            log.error(
                "checkpoint_write_failed", reason=reason, error=f"{type(exc).__name__}: {exc}", retry_in_s=RETRY_S
            )
            self._dirty, self._next_due = True, time.monotonic() + RETRY_S
            return False
        self._reached("written")
        # Step 5. Commit the same offsets to Kafka.
        await self._steps.commit_offsets(from_topics(state["offsets"]))
        self._reached("committed")
        # Step 6. Prune old checkpoints; a failure here costs disk space, not safety.
        try:
            await asyncio.to_thread(self.store.prune)
        except Exception as exc:  # noqa: BLE001
            log.warning("checkpoint_prune_failed", error=str(exc))
        await self._steps.published(state)
        self.last, self.last_at = {"path": str(path), "reason": reason, "at": time.time()}, time.time()
        self._telemetry.checkpoint_written(time.monotonic() - started, reason)
        log.info("checkpoint_written", reason=reason, path=str(path), seconds=round(time.monotonic() - started, 3))
        return True

    async def _persist_in_background(self, state: dict[str, Any], reason: str, started: float) -> None:
        try:
            await self._persist(state, reason, started)
        except Exception as exc:  # noqa: BLE001 - handed on: whatever fails a background write fails the service
            self._steps.failed(exc)

    async def finish_writing(self) -> None:
        """Wait for the background steps 4 to 6 of the last cut, if they are still running."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def abandon(self) -> None:
        """After a failure: nothing is committed any more; a background write stops (a file it already
        wrote is a whole cut)."""
        self._abandoned = True
        if self._writing is not None:
            self._writing.cancel()

    async def commit_before_revoke(self) -> None:
        """A cut before partitions are revoked, even with nothing new since the last: a revocation is always
        on record as a committed checkpoint. None after a failure; a failure here is reported as ``failed``."""
        if self._abandoned:
            return
        try:
            async with self.lock:
                await self.commit("revoked")
        except Exception as exc:
            self._steps.failed(exc)  # aiokafka logs and swallows a listener's error; the service must fail
            raise

    async def restore(
        self, load: Callable[[dict[str, Any]], Awaitable[None]], settings: Settings, *, transactional: bool
    ) -> LoadedCheckpoint | None:
        """Restore the checkpoint to start from (:func:`checkpoint_to_restore`): ``load`` puts its state
        back, and reading goes on from its offsets. None when there is none (start fresh)."""
        loaded = await checkpoint_to_restore(self.store, settings, transactional=transactional)
        if loaded is None:
            log.info("no_checkpoint", directory=str(self.store.directory))
            return None
        await load(loaded.state)
        self.offsets.clear()
        self.offsets.update(from_topics(loaded.state["offsets"]))
        version = loaded.state.get("summary", {}).get("model_version")
        log.info("checkpoint_restored", path=str(loaded.path), model_version=version)
        return loaded

    def _reached(self, step: str) -> None:
        self._telemetry.checkpoint_step(step, self._taken)
