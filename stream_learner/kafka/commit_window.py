"""A predictor's offsets: committed only after the predictions before them were acknowledged.

At least once: a crash repeats at most what was read since the last commit, one ``COMMIT_INTERVAL_S``
of events (plus what was batched then). The predictor commits through :meth:`CommitWindow.commit`,
which drains first: every batched event predicted, every delivery acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog
from aiokafka import TopicPartition

log = structlog.get_logger(__name__)


class CommitWindow:
    """The next offset of each partition read, and when they are next committed."""

    def __init__(
        self,
        interval_s: float,
        drain: Callable[[], Awaitable[None]],
        commit: Callable[[Mapping[TopicPartition, int]], Awaitable[None]],
    ) -> None:
        self.offsets: dict[TopicPartition, int] = {}
        self._interval_s = interval_s
        self._drain = drain
        self._commit = commit
        self._next_due = time.monotonic() + interval_s
        self._dirty = False

    def store_offset(self, tp: TopicPartition, offset: int) -> None:
        self.offsets[tp] = offset

    def touch(self) -> None:
        self._dirty = True

    def due(self) -> bool:
        return self._dirty and time.monotonic() >= self._next_due

    async def commit(self) -> None:
        """Drain, then commit the offsets of every partition read; the caller stops intake."""
        await self._drain()
        try:
            await self._commit(dict(self.offsets))
        except Exception as exc:  # noqa: BLE001 - the next commit carries them; a crash repeats the window
            log.warning("offset_commit_failed", error=f"{type(exc).__name__}: {exc}")
        self._dirty, self._next_due = False, time.monotonic() + self._interval_s

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked: their offsets belong to their next owner."""
        for tp in partitions:
            self.offsets.pop(tp, None)
