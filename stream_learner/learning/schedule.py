"""Training schedule: which joined examples form each optimizer step, and in what order.

While the service is catching up, the order depends on the data, not on timing:
- each step takes ``batch_size`` examples of one labels partition, lowest label
  offsets first, and never passes a label of that partition still waiting for
  its event: while events are left to read (its event may be among them) and
  fewer than ``max_held`` examples of the partition queue behind it; after
  that, for at most ``hold_s`` of this process's time;
- partitions take turns in a fixed round-robin order (partition number); the turn
  waits for a partition that may still get examples (labels left to read, or a
  label waiting for its event) and passes one that cannot.

So a replay from a checkpoint over the same records makes the same steps as an
uninterrupted run, as long as labels run fewer than ``max_held`` examples ahead
of their events. Once everything is read (live traffic), a partition's
remainder trains once it has waited ``max_wait_s`` (the turn waits at most that
long), and step composition follows timing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np
import torch

from stream_learner.learning.examples import UNLABELED_PARTITION, Examples
from stream_learner.learning.partition_queue import Chunk, PartitionQueue

ReadToEnd = Callable[[int], bool]
LowestWaiting = Callable[[int], "tuple[int, float] | None"]


class TrainingSchedule:
    """Per-partition queues of joined examples, ordered by label offset, taken in turns."""

    def __init__(self, batch_size: int, max_wait_s: float, hold_s: float = 5.0, max_held: int = 1_000_000) -> None:
        self.batch_size, self.max_wait_s, self.hold_s, self.max_held = batch_size, max_wait_s, hold_s, max_held
        self._queues: dict[int, PartitionQueue] = {UNLABELED_PARTITION: PartitionQueue()}
        self._turn = UNLABELED_PARTITION
        self._blocked_since: dict[int, tuple[int, float]] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued(self, partition: int) -> int:
        """Examples of labels partition ``partition`` queued for a step."""
        queue = self._queues.get(partition)
        return 0 if queue is None else len(queue)

    def in_turn_order(self) -> list[int]:
        """The labels partitions, the one whose turn it is first."""
        order = sorted(self._queues)
        start = order.index(self._turn) if self._turn in order else 0
        return order[start:] + order[:start]

    def set_partitions(self, partitions: Iterable[int]) -> None:
        """The labels partitions that take turns (the assigned ones); queued examples are kept."""
        for p in partitions:
            self._queues.setdefault(p, PartitionQueue())

    def add(self, examples: Examples, now: float) -> None:
        """Queue joined examples; ``examples.partitions``/``offsets`` give their label positions."""
        n = len(examples)
        if n == 0:
            return
        assert examples.partitions is not None and examples.offsets is not None
        partitions = np.asarray(examples.partitions, np.int64)
        chunk = Chunk(
            np.asarray(examples.offsets, np.int64),
            np.full(n, now, np.float64),
            examples.features,
            np.asarray(examples.labels, np.float64),
            examples.scores,
        )
        first = int(partitions[0])
        if (partitions == first).all():
            self._queues.setdefault(first, PartitionQueue()).add(chunk)
            return
        for p in np.unique(partitions).tolist():
            self._queues.setdefault(p, PartitionQueue()).add(chunk.take(np.flatnonzero(partitions == p)))

    def take_due(
        self,
        now: float,
        everything_read: bool,
        read_to_end: ReadToEnd,
        lowest_waiting: LowestWaiting,
        events_unread: bool = False,
    ) -> list[Examples]:
        """The steps due now, in turn order; stops at a partition that may still complete its next step.

        ``everything_read``: no assigned partition of either topic has records left to read.
        ``read_to_end(p)``: labels partition ``p`` has no records left to read.
        ``lowest_waiting(p)``: the lowest offset of ``p`` whose label waits for its event, if any.
        ``events_unread``: events are left to read or to predict (a waiting label's event may come).

        Once everything is read, the full steps still queued go in the same turns as while
        catching up, and only then the remainders, in partition order, each once it has waited
        ``max_wait_s``: whether the last records were read before or after a full step was
        taken is timing, and must not change the order of the steps.
        """
        if everything_read:
            steps = self._in_turns(now, lambda p: True, lambda p: None, False)
            return steps + self._remainders(now)
        return self._in_turns(now, read_to_end, lowest_waiting, events_unread)

    def _in_turns(
        self, now: float, read_to_end: ReadToEnd, lowest_waiting: LowestWaiting, events_unread: bool
    ) -> list[Examples]:
        """Full steps, partitions taking turns; stops at a partition that may still complete its next step."""
        steps: list[Examples] = []
        order = sorted(self._queues)
        start = order.index(self._turn) if self._turn in order else 0
        idle = 0
        for p in itertools.islice(itertools.cycle(order), start, None):
            if idle == len(order):
                break
            step, wait = self._next_step(p, now, read_to_end, lowest_waiting, events_unread)
            if wait:
                self._turn = p
                return steps
            self._turn = order[(order.index(p) + 1) % len(order)]
            if step is None:
                idle += 1
            else:
                steps.append(step)
                idle = 0
        return steps

    def take_all(self) -> list[Examples]:
        """Everything queued, in turn order, ignoring waits (for a clean shutdown)."""
        steps: list[Examples] = []
        while len(self):
            steps.extend(self.take_due(math.inf, True, lambda p: True, lambda p: None))
        return steps

    def _next_step(
        self,
        p: int,
        now: float,
        read_to_end: ReadToEnd,
        lowest_waiting: LowestWaiting,
        events_unread: bool,
    ) -> tuple[Examples | None, bool]:
        """(step or None, whether the turn must wait for partition ``p``)."""
        queue = self._queues[p]
        if p == UNLABELED_PARTITION:
            return self._live_step(queue, now)
        to_end = read_to_end(p)
        limit = self._hold_limit(p, now, lowest_waiting(p), events_unread and len(queue) < self.max_held)
        if queue.count_below(limit, self.batch_size) == self.batch_size:
            return _examples(queue.pop(self.batch_size)), False
        may_grow = not to_end or limit != math.inf
        return None, may_grow

    def _remainders(self, now: float) -> list[Examples]:
        """Each partition's remainder, in partition order, once it has waited ``max_wait_s``."""
        steps: list[Examples] = []
        for p in sorted(self._queues):
            step, wait = self._live_step(self._queues[p], now)
            if wait:
                break
            if step is not None:
                steps.append(step)
        return steps

    def _live_step(self, queue: PartitionQueue, now: float) -> tuple[Examples | None, bool]:
        """A full step, or the remainder once it has waited ``max_wait_s`` (the turn waits for it)."""
        count = min(len(queue), self.batch_size)
        if count == 0:
            return None, False
        if count == self.batch_size or now - queue.oldest_joined(count) >= self.max_wait_s:
            return _examples(queue.pop(count)), False
        return None, True

    def _hold_limit(self, p: int, now: float, waiting: tuple[int, float] | None, event_may_come: bool) -> float:
        """The offset steps of ``p`` may not pass: its lowest waiting label, while its event may come
        (a rule on the data, so replays agree), then until held for ``hold_s``."""
        if waiting is None:
            self._blocked_since.pop(p, None)
            return math.inf
        offset = waiting[0]
        if event_may_come:
            self._blocked_since.pop(p, None)
            return float(offset)
        blocked = self._blocked_since.get(p)
        if blocked is None or blocked[0] != offset:
            self._blocked_since[p] = blocked = (offset, now)
        return math.inf if now - blocked[1] > self.hold_s else float(offset)

    def state_dict(self) -> dict[str, object]:
        """Queued examples per partition, in offset order, and whose turn it is."""
        queues: dict[int, dict[str, torch.Tensor]] = {}
        for p, queue in self._queues.items():
            items = queue.everything()
            queues[p] = {
                "offsets": torch.from_numpy(items.offsets.copy()) if items else torch.zeros(0, dtype=torch.int64),
                "features": torch.from_numpy(items.features.copy()) if items else torch.zeros(0),
                "labels": torch.from_numpy(items.labels.copy()) if items else torch.zeros(0, dtype=torch.float64),
                "scores": torch.from_numpy(items.scores.copy()) if items else torch.zeros(0),
            }
        return {"turn": self._turn, "queues": queues}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the queues with a :meth:`state_dict`; restored examples count as just joined."""
        self._turn = int(state["turn"])  # type: ignore[call-overload]  # an int in a state dict
        self._queues = {UNLABELED_PARTITION: PartitionQueue()}
        queues = cast(dict[int, dict[str, torch.Tensor]], state["queues"])
        for p, q in queues.items():
            n = len(q["offsets"])
            self._queues.setdefault(int(p), PartitionQueue())
            if n == 0:
                continue
            examples = Examples(
                q["features"].numpy().reshape(n, -1),
                q["labels"].numpy(),
                q["scores"].numpy().reshape(n, -1),
                np.full(n, int(p), np.int64),
                q["offsets"].numpy(),
            )
            self.add(examples, -math.inf)


def _examples(chunk: Chunk) -> Examples:
    """A step of the queued rows ``chunk``."""
    return Examples(features=chunk.features, labels=chunk.labels, scores=chunk.scores)
