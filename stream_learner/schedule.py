"""Training schedule: which joined examples form each optimizer step, and in what order.

While the service is catching up, the order depends on the data, not on timing:
- each step takes ``batch_size`` examples of one labels partition, lowest label
  offsets first, and never passes a label of that partition still waiting for
  its event (for at most ``hold_s`` of this process's time);
- partitions take turns in a fixed round-robin order (partition number); the turn
  waits for a partition that may still get examples (labels left to read, or a
  label waiting for its event) and passes one that cannot.

So a replay from a checkpoint over the same records makes the same steps as an
uninterrupted run. Once everything is read (live traffic), a partition's
remainder trains once it has waited ``max_wait_s`` (the turn waits at most that
long), and step composition follows timing.
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

ReadToEnd = Callable[[int], bool]
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
        self._blocked_since: dict[int, tuple[int, float]] = {}

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

    def take_due(self, now: float, everything_read: bool, read_to_end: ReadToEnd, lowest_waiting: LowestWaiting) -> list[Examples]:
        """The steps due now, in turn order; stops at a partition that may still complete its next step.

        ``everything_read``: no assigned partition of either topic has records left to read.
        ``read_to_end(p)``: labels partition ``p`` has no records left to read.
        ``lowest_waiting(p)``: the lowest offset of ``p`` whose label waits for its event, if any.
        """
        steps: list[Examples] = []
        order = sorted(self._queues)
        start = order.index(self._turn) if self._turn in order else 0
        idle = 0
        for p in itertools.islice(itertools.cycle(order), start, None):
            if idle == len(order):
                break
            step, wait = self._next_step(p, now, everything_read, read_to_end(p), lowest_waiting(p))
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
        self, p: int, now: float, everything_read: bool, read_to_end: bool, waiting: tuple[int, float] | None
    ) -> tuple[Examples | None, bool]:
        """(step or None, whether the turn must wait for partition ``p``)."""
        queue = self._queues[p]
        if p == UNLABELED_PARTITION or everything_read:
            return self._live_step(queue, now)
        limit = self._hold_limit(p, now, waiting)
        head = _pop_below(queue, limit, self.batch_size)
        if len(head) == self.batch_size:
            return _stack(head), False
        for item in head:
            heapq.heappush(queue, item)
        may_grow = not read_to_end or limit != math.inf
        return None, may_grow

    def _live_step(self, queue: list[_Queued], now: float) -> tuple[Examples | None, bool]:
        """A full step, or the remainder once it has waited ``max_wait_s`` (the turn waits for it)."""
        head = _pop_below(queue, math.inf, self.batch_size)
        if len(head) == self.batch_size or (head and now - min(i.joined_at for i in head) >= self.max_wait_s):
            return _stack(head), False
        for item in head:
            heapq.heappush(queue, item)
        return None, bool(head)

    def _hold_limit(self, p: int, now: float, waiting: tuple[int, float] | None) -> float:
        """The offset steps of ``p`` may not pass: its lowest waiting label, until held for ``hold_s``."""
        if waiting is None:
            self._blocked_since.pop(p, None)
            return math.inf
        offset = waiting[0]
        blocked = self._blocked_since.get(p)
        if blocked is None or blocked[0] != offset:
            self._blocked_since[p] = blocked = (offset, now)
        return math.inf if now - blocked[1] > self.hold_s else float(offset)

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
