"""Training schedule: which joined examples form each optimizer step, and in what order.

The order depends on the data, not on timing, whenever the service is catching up:
- each step takes ``batch_size`` examples of one labels partition, lowest label
  offsets first, and never passes a label of that partition still waiting for
  its event (for at most ``hold_s``);
- partitions take turns in a fixed round-robin order (partition number), and the
  turn waits for a partition whose labels are still being read.

So a replay from a checkpoint over the same records makes the same steps as an
uninterrupted run. A partition that is caught up (nothing left to read) does not
hold the others back: its remainder trains once it has waited ``max_wait_s``,
which is where live traffic makes steps depend on timing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from .join import UNLABELED_PARTITION, Examples

CaughtUp = Callable[[int], bool]
LowestWaiting = Callable[[int], "tuple[int, float] | None"]


@dataclass(order=True)
class _Queued:
    offset: int
    seq: int
    joined_at: float
    features: np.ndarray
    label: float
    scores: np.ndarray


class TrainingSchedule:
    """Per-partition queues of joined examples, ordered by label offset, taken in turns."""

    def __init__(self, batch_size: int, max_wait_s: float, hold_s: float = 5.0) -> None:
        self.batch_size, self.max_wait_s, self.hold_s = batch_size, max_wait_s, hold_s
        self._queues: dict[int, list[_Queued]] = {UNLABELED_PARTITION: []}
        self._turn = UNLABELED_PARTITION
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def set_partitions(self, partitions: Iterable[int]) -> None:
        """The labels partitions that take turns (the assigned ones); queued examples are kept."""
        for p in partitions:
            self._queues.setdefault(p, [])

    def add(self, examples: Examples, now: float) -> None:
        """Queue joined examples; ``examples.partitions``/``offsets`` give their label positions."""
        if len(examples) == 0:
            return
        assert examples.partitions is not None and examples.offsets is not None
        for i, (p, offset) in enumerate(zip(examples.partitions.tolist(), examples.offsets.tolist())):
            item = _Queued(offset, next(self._seq), now, examples.features[i], float(examples.labels[i]), examples.scores[i])
            heapq.heappush(self._queues.setdefault(p, []), item)

    def take_due(self, now: float, caught_up: CaughtUp, lowest_waiting: LowestWaiting) -> list[Examples]:
        """The steps due now, in turn order; stops at a partition whose next step is still being read."""
        steps: list[Examples] = []
        order = sorted(self._queues)
        start = order.index(self._turn) if self._turn in order else 0
        idle = 0
        for p in itertools.islice(itertools.cycle(order), start, None):
            if idle == len(order):
                break
            step, wait = self._next_step(p, now, caught_up(p), lowest_waiting(p))
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
            steps.extend(self.take_due(math.inf, lambda p: True, lambda p: None))
        return steps

    def _next_step(
        self, p: int, now: float, caught_up: bool, waiting: tuple[int, float] | None
    ) -> tuple[Examples | None, bool]:
        """(step or None, whether the turn must wait for partition ``p``)."""
        queue = self._queues[p]
        if p == UNLABELED_PARTITION:
            caught_up, waiting = True, None
        if caught_up or (waiting is not None and now - waiting[1] > self.hold_s):
            waiting = None
        limit = waiting[0] if waiting is not None else math.inf
        head = _pop_below(queue, limit, self.batch_size)
        if len(head) == self.batch_size:
            return _stack(head), False
        if caught_up and head and now - min(i.joined_at for i in queue + head) >= self.max_wait_s:
            return _stack(head), False
        for item in head:
            heapq.heappush(queue, item)
        return None, not caught_up

    def state_dict(self) -> dict[str, object]:
        """Queued examples per partition, in offset order, and whose turn it is."""
        state: dict[str, object] = {"turn": self._turn, "queues": {}}
        for p, queue in self._queues.items():
            items = sorted(queue)
            state["queues"][p] = {  # type: ignore[index]
                "offsets": torch.tensor([i.offset for i in items], dtype=torch.int64),
                "features": torch.from_numpy(np.stack([i.features for i in items])) if items else torch.zeros(0),
                "labels": torch.tensor([i.label for i in items], dtype=torch.float64),
                "scores": torch.from_numpy(np.stack([i.scores for i in items])) if items else torch.zeros(0),
            }
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the queues with a :meth:`state_dict`; restored examples count as just joined."""
        self._turn = int(state["turn"])  # type: ignore[call-overload]
        self._queues = {UNLABELED_PARTITION: []}
        for p, q in state["queues"].items():  # type: ignore[attr-defined]
            n = len(q["offsets"])
            self._queues.setdefault(int(p), [])
            if n == 0:
                continue
            examples = Examples(
                q["features"].numpy().reshape(n, -1), q["labels"].numpy(), q["scores"].numpy().reshape(n, -1),
                np.full(n, int(p), np.int64), q["offsets"].numpy(),
            )
            self.add(examples, -math.inf)


def _pop_below(queue: list[_Queued], limit: float, most: int) -> list[_Queued]:
    """Pop up to ``most`` of the lowest offsets in ``queue`` that are below ``limit``."""
    head: list[_Queued] = []
    while queue and len(head) < most and queue[0].offset < limit:
        head.append(heapq.heappop(queue))
    return head


def _stack(items: list[_Queued]) -> Examples:
    return Examples(
        features=np.stack([i.features for i in items]),
        labels=np.array([i.label for i in items], np.float64),
        scores=np.stack([i.scores for i in items]),
    )
