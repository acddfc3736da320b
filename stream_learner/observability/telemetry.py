"""Telemetry hooks: what the run loop reports as it works.

The service calls these at the points named; the default does nothing.
:mod:`stream_learner.observability.prometheus` implements them with Prometheus (and TensorBoard).
Gauges (counters, pending entries, lag, prequential metrics, model version,
checkpoint age) are read through :class:`~stream_learner.observability.status.ServiceStatus`
at scrape time instead of being pushed.
"""

from __future__ import annotations

import numpy as np


class Telemetry:
    """No-op telemetry; subclass and override what you record."""

    def batch_predicted(self, size: int, seconds: float, event_times: np.ndarray) -> None:
        """A micro-batch of ``size`` events was predicted in ``seconds`` of model time.

        ``event_times``: epoch seconds of each event (its ``ts``, else its Kafka timestamp).
        """

    def predictions_published(self, count: int) -> None:
        """``count`` predictions were handed to the producer."""

    def labels_joined(self, label_delays_s: np.ndarray) -> None:
        """Labels joined to their events; ``label_delays_s`` from each event's arrival to its label's."""

    def step_trained(self, examples: int, seconds: float, loss: float, model_version: int) -> None:
        """One optimizer step on ``examples`` took ``seconds``; ``loss`` is NaN when the step was skipped."""

    def dead_lettered(self, reason: str) -> None:
        """A record went to the dead-letter topic for ``reason``."""

    def checkpoint_written(self, seconds: float, reason: str) -> None:
        """A checkpoint was made durable in ``seconds`` (drain to commit)."""

    def checkpoint_step(self, step: str, checkpoint: int) -> None:
        """Step ``step`` (drained, snapshot, written_temp, written, committed) of this process's
        ``checkpoint``-th checkpoint is done (the crash tests end the process here)."""

    def intake_paused(self, seconds: float) -> None:
        """A checkpoint held intake for ``seconds``: its drain and snapshot, and its write and commit
        where it waited for them."""

    def close(self) -> None:
        """The service stopped."""
