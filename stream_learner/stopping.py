"""Waiting that a stop cuts short: the run loops' ``asyncio.Event`` set by SIGTERM or ``stop()``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def until_stopped_or(stop: asyncio.Event, *others: Awaitable[object]) -> None:
    """Wait until ``stop`` is set or one of ``others`` is done; the waits made here are cancelled after.

    An ``asyncio.Task`` among ``others`` is waited for, never cancelled: its owner reads its result."""
    made: list[asyncio.Future[object]] = [asyncio.ensure_future(stop.wait())]
    made += [asyncio.ensure_future(o) for o in others if not isinstance(o, asyncio.Task)]
    tasks = [o for o in others if isinstance(o, asyncio.Task)]
    try:
        await asyncio.wait([*made, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in made:
            wait.cancel()
