"""Labelled examples: what the join hands to the training schedule, and the schedule to the trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNLABELED_PARTITION = -1
"""Label partition of examples labelled by the missing-label policy (they have no label record)."""


@dataclass(frozen=True)
class Examples:
    """Labelled examples, row i of each array together."""

    features: np.ndarray
    """float32 ``[k, input_dim]``."""
    labels: np.ndarray
    """float64 ``[k]``."""
    scores: np.ndarray
    """float32 ``[k, output_dim]``: what the model predicted before the label was known."""
    partitions: np.ndarray | None = None
    """int64 ``[k]``: partition of each label record (``UNLABELED_PARTITION`` for defaulted events)."""
    offsets: np.ndarray | None = None
    """int64 ``[k]``: offset of each label record in its partition."""
    event_arrived: np.ndarray | None = None
    """float64 ``[k]``: epoch seconds each event arrived (for the label-delay metric), where known;
    for a label that came before its event, the time the event arrived and joined it."""

    def __len__(self) -> int:
        return len(self.labels)
