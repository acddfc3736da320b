"""Instrumentation of an in-process :class:`~stream_learner.service.Service`, from outside it.

Wraps the trainer's ``learn_many`` (it runs on the device thread) and the training queue's
``add`` to measure examples trained per second and the lag from the moment a label meets
its event (label arrival, when the event was already predicted) to the end of the
optimizer step that uses it. Nothing in the service is changed.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import numpy as np


class TrainingProbe:
    """Steps and per-example join-to-step lags of one service."""

    def __init__(self, service: Any) -> None:
        self.steps: list[tuple[float, int]] = []
        self.last_step_wall = float("nan")
        """Epoch seconds at the end of the last optimizer step."""
        self.lags: list[float] = []
        self._fifo: deque[list[float]] = deque()  # [joined_at, count] in queue order
        self._keyed: dict[tuple[int, int], float] = {}
        learner = service.learner
        queue = getattr(learner, "schedule", None)
        self._by_offset = queue is not None
        self._stacked: dict[int, list[float]] = {}
        if self._by_offset:
            self._wrap_schedule_stack()
        if queue is not None and not self._by_offset:
            add = queue.add

            def probed_add(examples: Any, now: float, *args: Any, **kwargs: Any) -> Any:
                self._joined(examples, time.monotonic())
                return add(examples, now, *args, **kwargs)

            queue.add = probed_add
        trainer = learner.trainer
        learn = trainer.learn_many

        def probed_learn(examples: Any) -> Any:
            loss = learn(examples)
            self._stepped(examples, time.monotonic())
            self.last_step_wall = time.time()
            return loss

        trainer.learn_many = probed_learn

    def _wrap_schedule_stack(self) -> None:
        """The schedule orders steps by label offset and stacks queued items that know when they
        were joined (``joined_at``, monotonic); remember those per step, by the step's identity."""
        try:
            from stream_learner.learning import schedule
        except ImportError:
            return
        # ``_examples(chunk)``: the schedule's queued rows (numpy, ``chunk.joined_at``) -> a step;
        # ``_stack(items)``: the same from one object per example (before the numpy queues).
        name = "_examples" if hasattr(schedule, "_examples") else "_stack"
        stack = getattr(schedule, name, None)
        if stack is None:
            return

        def probed_stack(items: Any) -> Any:
            step = stack(items)
            joined_at = getattr(items, "joined_at", None)
            if joined_at is not None:
                self._stacked[id(step)] = joined_at.tolist()
            else:
                self._stacked[id(step)] = [getattr(i, "joined_at", float("nan")) for i in items]
            return step

        setattr(schedule, name, probed_stack)
        self._restore = lambda: setattr(schedule, name, stack)

    def close(self) -> None:
        """Undo the module-level wrapping (the trainer and queue wrappers die with the service)."""
        restore = getattr(self, "_restore", None)
        if restore is not None:
            restore()
            self._restore = None

    def _joined(self, examples: Any, now: float) -> None:
        n = len(examples)
        if not n:
            return
        if self._by_offset and getattr(examples, "offsets", None) is not None:
            for key in zip(examples.partitions.tolist(), examples.offsets.tolist()):
                self._keyed[key] = now
        else:
            self._fifo.append([now, n])

    def _stepped(self, examples: Any, now: float) -> None:
        n = len(examples)
        self.steps.append((now, n))
        joined_at = self._stacked.pop(id(examples), None)
        if joined_at is not None:
            self.lags.extend(now - t for t in joined_at)
            return
        if self._by_offset and getattr(examples, "offsets", None) is not None:
            for key in zip(examples.partitions.tolist(), examples.offsets.tolist()):
                joined = self._keyed.pop(key, None)
                if joined is not None:
                    self.lags.append(now - joined)
            return
        while n and self._fifo:
            head = self._fifo[0]
            take = min(n, int(head[1]))
            self.lags.extend([now - head[0]] * take)
            head[1] -= take
            n -= take
            if not head[1]:
                self._fifo.popleft()

    def trained(self) -> int:
        return sum(n for _, n in self.steps)

    def examples_per_s(self) -> float:
        """Examples trained per second between the first and the last step."""
        if len(self.steps) < 2:
            return float("nan")
        span = self.steps[-1][0] - self.steps[0][0]
        return sum(n for _, n in self.steps[1:]) / span if span > 0 else float("nan")

    def lag_array(self) -> np.ndarray:
        return np.asarray(self.lags, np.float64)


class LatencyProbe:
    """Where a paced event's time goes before its prediction leaves the service, per event.

    Wraps the micro-batcher's ``add`` (decoded events, each with its ``ts`` and the moment the
    service read it) and the telemetry's ``batch_predicted`` (called once a micro-batch's scores
    are back, just before they are encoded and produced). Events without a ``ts`` are left out,
    as are those produced in the first ``warmup_s`` after the first one (the load generator's
    warm-up). Nothing in the service is changed.
    """

    def __init__(self, service: Any, warmup_s: float) -> None:
        self.warmup_s = warmup_s
        self._first_ts = float("nan")
        self._read: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []
        add, predicted = service.batcher.add, service.telemetry.batch_predicted

        def probed_add(events: Any, now: float) -> Any:
            self._read.append(self._since_produced(events.ts, events.received_at))
            return add(events, now)

        def probed_predicted(size: int, seconds: float, event_times: np.ndarray) -> Any:
            self._predicted.append(self._since_produced(event_times, time.time()))
            return predicted(size, seconds, event_times)

        service.batcher.add = probed_add
        service.telemetry.batch_predicted = probed_predicted

    def _since_produced(self, ts: np.ndarray, at: Any) -> np.ndarray:
        known = ~np.isnan(ts)
        if known.any() and math.isnan(self._first_ts):
            self._first_ts = float(ts[known].min())
        keep = known & (ts >= self._first_ts + self.warmup_s)
        return (np.broadcast_to(at, ts.shape) - ts)[keep]

    def to_read(self) -> np.ndarray:
        """Seconds from each event's ``ts`` to the service reading it (producer, broker and fetch)."""
        return np.concatenate(self._read) if self._read else np.zeros(0)

    def to_predicted(self) -> np.ndarray:
        """Seconds from each event's ``ts`` to its micro-batch's scores (adds the batch delay and the turn)."""
        return np.concatenate(self._predicted) if self._predicted else np.zeros(0)
