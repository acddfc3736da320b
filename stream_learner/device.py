"""The device thread: the one place where torch runs.

Inference and training both run on one worker thread, in submission order, so
the model needs no locks and the event loop never blocks on compute (torch
releases the GIL in its kernels, so fetching and producing go on meanwhile).
Submission order is the order of effects: a snapshot queued after a training step
sees that step's weights.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DeviceThread:
    """Runs callables one at a time on a dedicated thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-learner-device")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the device thread and await its result."""
        return await self.submit(fn, *args, **kwargs)

    def submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Queue ``fn(*args, **kwargs)`` now; it runs after everything queued before it.

        The caller goes on at once (decoding, producing) while the device works.
        """
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Finish queued work and stop the thread."""
        self._executor.shutdown(wait=True)
