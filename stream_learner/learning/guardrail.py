"""The loss-spike guardrail: tells a poisoned training step from a change of regime.

Guarantees:
- Once ``MIN_LOSSES_FOR_SPIKES`` losses were accepted, a loss above ``spike_factor`` x the median
  of the last ``RECENT_LOSSES`` accepted ones (and above the loss floor: a uniform guess's loss for
  classification) is a spike: the trainer skips that step.
- The ``MAX_SPIKES_IN_ROW``-th spike in a row is not: the new loss level is accepted as a real
  change of regime (concept drift), and the recent losses are forgotten, so the guardrail cannot
  freeze the model.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from stream_learner.config import Settings

RECENT_LOSSES = 100
MIN_LOSSES_FOR_SPIKES = 20
MAX_SPIKES_IN_ROW = 10


class SpikeCount(Protocol):
    """Where the count of spikes in a row is kept (the trainer's counters, saved with them)."""

    spikes_in_row: int


class LossGuardrail:
    """The recent accepted losses, and the rule that tells a spike among them."""

    def __init__(self, spike_factor: float, loss_floor: float) -> None:
        self.spike_factor = spike_factor
        self.loss_floor = loss_floor
        self.recent_losses: deque[float] = deque(maxlen=RECENT_LOSSES)

    @classmethod
    def of(cls, settings: Settings) -> LossGuardrail:
        """The guardrail the settings ask for, its floor the loss of a uniform guess (classification)."""
        floor = math.log(settings.num_classes) if settings.task == "classification" else 1e-8
        return cls(settings.loss_spike_factor, floor)

    def is_spike(self, loss: float, count: SpikeCount) -> bool:
        """A poisoned-looking ``loss`` (counted in ``count``); the MAX_SPIKES_IN_ROW-th in a row is accepted."""
        if len(self.recent_losses) < MIN_LOSSES_FOR_SPIKES:
            return False
        baseline = max(statistics.median(self.recent_losses), self.loss_floor)
        if loss <= self.spike_factor * baseline:
            count.spikes_in_row = 0
            return False
        if count.spikes_in_row + 1 >= MAX_SPIKES_IN_ROW:
            count.spikes_in_row = 0
            self.recent_losses.clear()
            return False
        count.spikes_in_row += 1
        return True

    def accept(self, loss: float) -> None:
        """Count ``loss``, a step's that was taken, among the recent losses."""
        self.recent_losses.append(loss)

    def restore(self, losses: Iterable[float]) -> None:
        """Put back the recent losses of a saved state."""
        self.recent_losses = deque(losses, maxlen=RECENT_LOSSES)
