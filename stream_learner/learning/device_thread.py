"""The device thread: where torch runs.

Inference and training both run on one worker thread, so the model needs no locks
and the event loop never blocks on compute (torch releases the GIL in its kernels,
so fetching and producing go on meanwhile). The one exception: while the thread is
:meth:`DeviceThread.idle`, the thread that queues the work may run a job itself, in
the place the next job would run (for a small model on the CPU, the handoff to the
thread and back costs more than the forward pass).

Order of effects: work queued with :meth:`DeviceThread.submit` or :meth:`DeviceThread.run`
runs in submission order, so a snapshot queued after a training step sees that
step's weights. Work queued with :meth:`DeviceThread.run_first` (read-only work such
as inference) runs before any of that queued work that has not started yet, so a
prediction waits for at most the one job in progress, not for the training queue.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_FIRST, _IN_ORDER, _STOP = 0, 1, 2


class DeviceThread:
    """Runs callables one at a time on a dedicated thread, read-only work first."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Any, Any]] = queue.PriorityQueue()
        self._sequence = itertools.count()
        self._queued = 0
        """Jobs queued so far (written by the queueing thread only)."""
        self._finished = 0
        """Jobs finished so far (written by the worker only)."""
        self._thread = threading.Thread(target=self._work, name="stream-learner-device", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` after everything queued before it, and await its result."""
        return await self.submit(fn, *args, **kwargs)

    async def run_first(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` ahead of queued in-order work, and await its result.

        Only for work that changes no state the in-order work depends on (inference).
        """
        return await self._queue(_FIRST, functools.partial(fn, *args, **kwargs))

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Queue ``fn(*args, **kwargs)`` after everything queued before it; the caller goes on at once."""
        return self._queue(_IN_ORDER, functools.partial(fn, *args, **kwargs))

    def submit_here_if_idle(
        self, here: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[T]:
        """As :meth:`submit`; but with ``here`` and the thread :meth:`idle`, run ``fn`` now in the
        caller's thread (where the next job would run) and return its settled future."""
        if not (here and self.idle()):
            return self.submit(fn, *args, **kwargs)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine, as the thread does
            future.set_exception(exc)
        return future

    def idle(self) -> bool:
        """Nothing queued and nothing running: a job run now by the caller runs where the next job would.

        Only meaningful in the thread that queues every job (the event loop's): no other
        thread can queue one meanwhile, so the thread stays idle until the caller queues again.
        """
        return self._queued == self._finished

    def close(self) -> None:
        """Finish queued work and stop the thread."""
        self._jobs.put((_STOP, next(self._sequence), None, None, None))
        self._thread.join()

    def _queue(self, priority: int, job: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued += 1
        self._jobs.put((priority, next(self._sequence), job, loop, future))
        return future

    def _work(self) -> None:
        while True:
            _, _, job, loop, future = self._jobs.get()
            if job is None:
                return
            try:
                outcome, failed = job(), False
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome, failed = exc, True
            self._finished += 1
            try:
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            except RuntimeError:  # the loop has closed; nobody is waiting any more
                pass


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.cancelled():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
