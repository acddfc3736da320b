"""Optimizer steps queued on the device thread, reported back to the loop in order.

Steps run while the loop decodes and produces; a cut's snapshot, queued after them, sees
their effect. At most ``MAX_QUEUED_STEPS`` wait: beyond that the loop waits, which is the
backpressure on intake. A poisoned step (loss spike) rolls the model back to the last cut's
state when ``GUARDRAIL_ACTION=rollback``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

import numpy as np
import structlog

from stream_learner.learning.device_thread import DeviceThread
from stream_learner.learning.join import Examples
from stream_learner.learning.model_set import ModelSet
from stream_learner.learning.trainer import Trainer
from stream_learner.observability.telemetry import Telemetry

log = structlog.get_logger(__name__)
MAX_QUEUED_STEPS = 32
"""Optimizer steps queued on the device thread before the loop waits for them."""
INLINE_TRAINING_MAX_S = 0.005
"""With a backlog, a CPU step that took less CPU time than this runs in the loop's thread when the
device thread is idle: the loop never idles then, and two threads taking turns on the GIL around
each small torch op cost more than the thread bought (docs/benchmarks.md)."""


class StepOutcome(NamedTuple):
    """What one queued optimizer step did (a tuple: it is made thousands of times a second)."""

    examples: int
    loss: float
    seconds: float
    model_version: int
    poisoned: bool
    rolled_back: bool
    dropped: int
    """Examples left out of the step for a loss of their own that is not finite."""
    features: np.ndarray
    """The step's features, for the debug log's digest (equal step sequences log equal digests)."""


class StepQueue:
    """Queues ``trainer``'s steps on ``device`` and reports them; the rollback state is the last cut's."""

    def __init__(
        self, trainer: Trainer | ModelSet, device: DeviceThread, telemetry: Telemetry, *, rollback: bool
    ) -> None:
        self._trainer = trainer
        self._device = device
        self._telemetry = telemetry
        self._rollback = rollback
        self._steps: list[asyncio.Future[StepOutcome]] = []
        self._inline = False
        self.last_good_state: dict[str, Any] | None = None
        """The trainer state of the last cut, where a poisoned step rolls back to."""

    async def submit(self, batches: list[Examples], *, backlog: bool) -> None:
        """Queue one step per batch, in order; with a ``backlog``, quick CPU steps run right here."""
        for examples in batches:
            here = backlog and self._inline  # a step that ran slow sends the next ones to the thread
            self._steps.append(self._device.submit_here_if_idle(here, self._train, examples))
            if len(self._steps) > MAX_QUEUED_STEPS and not self._steps[-MAX_QUEUED_STEPS - 1].done():
                await asyncio.wait([self._steps[-MAX_QUEUED_STEPS - 1]])

    def _train(self, examples: Examples) -> StepOutcome:
        """One step, and the guardrail's rollback right after a poisoned one (device thread or loop thread)."""
        counters = self._trainer.counters
        started, cpu_started = time.perf_counter(), time.thread_time()
        poisoned_before, skipped_before = counters.poisoned_steps, counters.examples_skipped
        loss = self._trainer.learn_many(examples)
        poisoned = counters.poisoned_steps != poisoned_before
        rolled_back = poisoned and self._rollback and self.last_good_state is not None
        if rolled_back:
            self._trainer.rollback(self.last_good_state)  # type: ignore[arg-type]  # checked just above
        seconds, version = time.perf_counter() - started, self._trainer.model_version
        # CPU time, not wall: on the device thread a step's wall time includes waits for the GIL.
        cpu_s = time.thread_time() - cpu_started
        self._inline = self._trainer.device.type == "cpu" and cpu_s < INLINE_TRAINING_MAX_S
        dropped = counters.examples_skipped - skipped_before if loss == loss else 0
        return StepOutcome(len(examples), loss, seconds, version, poisoned, rolled_back, dropped, examples.features)

    async def finish(self, *, wait: bool) -> None:
        """Report the steps that are done, in order (all of them with ``wait``); a failed step raises."""
        if wait and self._steps:
            await asyncio.wait(self._steps)
        debug = bool(self._steps) and self._steps[0].done() and log.is_enabled_for(logging.DEBUG)
        while self._steps and self._steps[0].done():
            self._report(self._steps.pop(0).result(), debug)

    def _report(self, outcome: StepOutcome, debug: bool) -> None:
        self._telemetry.step_trained(outcome.examples, outcome.seconds, outcome.loss, outcome.model_version)
        if debug:  # the sum of a step's features costs more than the rest of its report
            digest = float(outcome.features.sum())
            log.debug("train_step", examples=outcome.examples, version=outcome.model_version, digest=digest)
        if outcome.rolled_back:
            log.warning("training_rolled_back", examples=outcome.examples, model_version=outcome.model_version)
        elif outcome.poisoned:
            log.warning("training_step_skipped", reason="loss spike", examples=outcome.examples)
        elif outcome.loss != outcome.loss:
            log.warning("training_step_skipped", reason="non-finite loss or gradient", examples=outcome.examples)
        elif outcome.dropped:
            log.warning("training_examples_dropped", reason="non-finite loss of their own", examples=outcome.dropped)
