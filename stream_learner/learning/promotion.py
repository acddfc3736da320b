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
  gives way to the first model. Under another ``window`` the restored models' windows start afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
        self.classification = task == "classification"
        self.champion = self.names[0]
        self.promotions = 0
        self.scored = np.zeros(len(self.names), np.int64)
        """Examples each model scored, in all."""
        self._recent = np.zeros((len(self.names), window), np.float64)
        """Each model's per-example errors, a ring of ``window`` slots, the next one at ``_next``."""
        self._next = np.zeros(len(self.names), np.int64)
        self._filled = np.zeros(len(self.names), np.int64)
        self._since_promotion = 0
        self._unchecked = 0
        self._check_every = max(1, window // 20)

    def score(self, scores: Sequence[np.ndarray], labels: np.ndarray) -> None:
        """Score each model's predictions (``scores[i]`` of ``names[i]``) of examples none has trained on."""
        stacked = np.stack(scores)
        if self.classification:
            errors = (stacked.argmax(axis=2) != labels.astype(np.int64)).astype(np.float64)
        else:
            errors = np.abs(stacked[:, :, 0].astype(np.float64) - labels)
        errors = errors[:, -self.window :]
        slots = (self._next[:, None] + np.arange(errors.shape[1])) % self.window
        self._recent[np.arange(len(self.names))[:, None], slots] = errors
        self._next = (self._next + errors.shape[1]) % self.window
        self._filled = np.minimum(self._filled + errors.shape[1], self.window)
        self.scored += len(labels)

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
        means = self._recent.mean(axis=1)
        return {n: float(means[i]) if self._filled[i] == self.window else None for i, n in enumerate(self.names)}

    def state_dict(self) -> dict[str, Any]:
        scores = {
            name: {
                "scored": int(self.scored[i]),
                "next": int(self._next[i]),
                "filled": int(self._filled[i]),
                "recent": torch.from_numpy(self._recent[i].copy()),
            }
            for i, name in enumerate(self.names)
        }
        return {
            "champion": self.champion,
            "promotions": self.promotions,
            "since_promotion": self._since_promotion,
            "unchecked": self._unchecked,
            "scores": scores,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` onto these members (see the module's guarantees)."""
        for i, name in enumerate(self.names):
            saved = state["scores"].get(name)
            if saved is None:
                continue
            self.scored[i] = int(saved["scored"])
            recent = saved["recent"].numpy()
            if len(recent) == self.window:
                self._recent[i], self._next[i], self._filled[i] = recent, int(saved["next"]), int(saved["filled"])
        self.champion = state["champion"] if state["champion"] in self.names else self.names[0]
        self.promotions = int(state["promotions"])
        self._since_promotion = int(state["since_promotion"])
        self._unchecked = int(state["unchecked"])
