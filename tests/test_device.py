"""DeviceThread: jobs run one at a time, in order, reads first; idle() says when the caller may run one itself."""

from __future__ import annotations

import asyncio
import threading

from stream_learner.learning.device_thread import DeviceThread


async def test_in_order_jobs_run_in_order_and_a_read_overtakes_the_queued_ones() -> None:
    device = DeviceThread()
    started, gate, ran = threading.Event(), threading.Event(), []
    try:
        blocking = device.submit(lambda: started.set() or gate.wait())
        assert await asyncio.to_thread(started.wait, 5)
        steps = [device.submit(ran.append, f"step {i}") for i in range(3)]
        read = asyncio.ensure_future(device.run_first(ran.append, "read"))
        await asyncio.sleep(0.05)
        assert ran == []  # the first job holds the thread
        gate.set()
        await asyncio.gather(blocking, *steps, read)
        assert ran == ["read", "step 0", "step 1", "step 2"]
    finally:
        gate.set()
        device.close()


async def test_idle_only_when_nothing_is_queued_or_running() -> None:
    device = DeviceThread()
    gate = threading.Event()
    try:
        assert device.idle()
        running = device.submit(gate.wait)
        assert not device.idle()
        queued = device.submit(lambda: threading.current_thread().name)
        await asyncio.sleep(0.05)
        assert not device.idle()
        gate.set()
        await running
        assert await queued == "stream-learner-device"
        assert device.idle()
        failing = device.submit(lambda: 1 / 0)
        try:
            await failing
        except ZeroDivisionError:
            pass
        assert device.idle()  # a failed job is finished too
    finally:
        gate.set()
        device.close()


async def test_submit_here_if_idle_runs_in_the_callers_thread_only_when_idle() -> None:
    device = DeviceThread()
    gate = threading.Event()
    name = lambda: threading.current_thread().name  # noqa: E731
    try:
        here = device.submit_here_if_idle(True, name)
        assert here.done() and here.result() == threading.current_thread().name
        assert await device.submit_here_if_idle(False, name) == "stream-learner-device"
        failed = device.submit_here_if_idle(True, lambda: 1 / 0)
        assert isinstance(failed.exception(), ZeroDivisionError)
        ran: list[str] = []
        running = device.submit(gate.wait)
        queued = device.submit_here_if_idle(True, ran.append, "after the running job")
        assert not queued.done()  # busy: it waits its turn on the thread, behind the running job
        gate.set()
        await asyncio.gather(running, queued)
        assert ran == ["after the running job"] and device.idle()
    finally:
        gate.set()
        device.close()
