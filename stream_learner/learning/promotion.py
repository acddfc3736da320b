"""Which model serves: each model's error on the examples it had not yet seen, and the promotion rule.

Guarantees:
- Each model's error is its own prequential one, over its last ``window`` scored examples: 1 - accuracy
  (classification) or the MAE in the target's units (regression).
- A challenger is promoted when every model's window is full, at least ``window`` examples were scored
  since the last promotion (or the start), and its error is below the champion's by ``margin`` of the
  champion's; of several, the one with the lowest error (ties: the first named). The rule is checked
  every ``window // 20`` examples (at least every example), counted in examples, so the same scores
  promote at the same step in a replay.
- The scores, the champion and the counts are in :meth:`state_dict`; a restored model that is no longer
  a member is forgotten, a new member starts with no scores, and a champion that is no longer a member
  gives way to the first model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_learner.learning.prequential import PrequentialMetrics


@dataclass(frozen=True)
class Promotion:
    """A challenger that became champion."""

    model: str
    replaced: str
    error: float
    champion_error: float


class Contest:
    """Per-model prequential errors over a window, and the champion they choose."""

    def __init__(self, names: Sequence[str], task: str, window: int, margin: float) -> None:
        self.names = list(names)
        self.window, self.margin = window, margin
        self.scores = {name: PrequentialMetrics(task, window) for name in self.names}
        self.champion = self.names[0]
        self.promotions = 0
        self._since_promotion = 0
        self._unchecked = 0
        self._check_every = max(1, window // 20)

    def score(self, name: str, scores: np.ndarray, labels: np.ndarray) -> None:
        """Score ``name``'s predictions of examples it has not trained on."""
        self.scores[name].update(scores, labels)

    def after_step(self, examples: int) -> Promotion | None:
        """Count a step's ``examples``; the promotion the rule makes now, if any (the champion changed)."""
        self._since_promotion += examples
        self._unchecked += examples
        if self._unchecked < self._check_every or self._since_promotion < self.window:
            return None
        self._unchecked = 0
        errors = {name: error for name, error in self.errors().items() if error is not None}
        if len(errors) < len(self.names):
            return None
        best = min(self.names, key=errors.__getitem__)
        if best == self.champion or errors[best] >= errors[self.champion] * (1 - self.margin):
            return None
        promotion = Promotion(best, self.champion, errors[best], errors[self.champion])
        self.champion, self.promotions, self._since_promotion = best, self.promotions + 1, 0
        return promotion

    def errors(self) -> dict[str, float | None]:
        """Each model's error over its window (None until the window is full)."""
        return {name: metrics.recent_error() for name, metrics in self.scores.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion,
            "promotions": self.promotions,
            "since_promotion": self._since_promotion,
            "unchecked": self._unchecked,
            "scores": {name: metrics.state_dict() for name, metrics in self.scores.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` onto these members (see the module's guarantees)."""
        for name, saved in state["scores"].items():
            if name in self.scores:
                self.scores[name].load_state_dict(saved)
        self.champion = state["champion"] if state["champion"] in self.scores else self.names[0]
        self.promotions = int(state["promotions"])
        self._since_promotion = int(state["since_promotion"])
        self._unchecked = int(state["unchecked"])
