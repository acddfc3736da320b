"""Backfill order: which read events to predict next while catching up, a training step's worth at a time.

Live, an event is predicted before its label exists, by weights that learned every label joined
before it. In a backfill both are already in the topics; predicting in the order events are read
would score many of them with weights that have not yet learned labels read long before. So,
while catching up, the service predicts one step's worth (``TRAIN_BATCH_SIZE``) at a time and
trains what is due in between, choosing the events by the training schedule's turn:

- the events partition whose labels partition has the turn comes first (events and labels keyed
  alike, so labels partition ``p`` holds the labels of events partition ``p``); then the others in
  turn order, each while it has less than a step queued (at most one step predicted ahead), or
  at any rate while the labels are paused (``in_turn=False``: too many labels wait for their
  events, and the labels the turn waits for are not read until those events are predicted);
- a partition's events wait for their labels: they are taken once the label of the first of them
  is read, or its labels partition is read up to where it ended when the backfill began (the label
  is not in the backlog: live, it is yet to come);
- events of a partition that is not a labels partition are taken in arrival order;
- nothing is taken while every partition waits, unless more than ``max_held`` events are read
  and not predicted: then the first read are taken, a micro-batch of them (their labels are not
  read: no step can come between them), so memory stays bounded and nothing stalls.

The predictions are published a micro-batch at a time (:class:`Predicted`), each event with the
model version that predicted it.

Only the predictions depend on this order (which weights made them); the training steps follow
the schedule, whose order depends on the data, not on timing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stream_learner.intake.batcher import MicroBatcher
from stream_learner.learning.schedule import TrainingSchedule
from stream_learner.records import EventBatch

HELD_FETCHES = 1
"""Events waiting for their labels at most, in ``FETCH_MAX_RECORDS``. More would score the excess of
a first fetch of events alone better, at 0.7-0.8x the catch-up throughput at 4 (docs/learning.md)."""

LabelRead = Callable[[int, str], bool]
"""``(labels partition, event id)``: the event's label is read, or cannot be in what is left to read."""


def next_backfill(
    batcher: MicroBatcher, schedule: TrainingSchedule, label_read: LabelRead, max_held: int, *, in_turn: bool = True
) -> EventBatch | None:
    """The next step's worth of events to predict, or None while they wait for their labels."""
    size = schedule.batch_size
    heads = batcher.heads()
    turns = schedule.in_turn_order()
    for i, p in enumerate(turns):
        ahead = in_turn and i > 0 and schedule.queued(p) >= size
        if p in heads and not ahead and label_read(p, heads[p]):
            return batcher.take_partition(p, size)
    others = [p for p in heads if p not in set(turns)]
    if others:
        return batcher.take_partition(others[0], size)
    return batcher.take_first(batcher.max_batch_size) if len(batcher) > max_held else None


class Predicted:
    """Predicted events gathered for one publication: the events, their scores, each one's model version,
    and the model that served them (one per publication: a promotion starts the next)."""

    def __init__(self) -> None:
        self._parts: list[tuple[EventBatch, np.ndarray, int]] = []
        self._count = 0
        self.model: str | None = None

    def __len__(self) -> int:
        return self._count

    def add(self, events: EventBatch, scores: np.ndarray, version: int, model: str | None) -> None:
        self._parts.append((events, scores, version))
        self._count += len(events)
        self.model = model

    def take(self) -> tuple[EventBatch, np.ndarray, np.ndarray]:
        """Everything gathered, in order (then nothing is); versions are int64, one per event."""
        parts, self._parts, self._count = self._parts, [], 0
        events = EventBatch.concat([p[0] for p in parts])
        versions = np.repeat(np.array([p[2] for p in parts], np.int64), [len(p[0]) for p in parts])
        return events, np.concatenate([p[1] for p in parts]), versions
