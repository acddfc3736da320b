"""Prequential (test-then-train) evaluation.

Each joined example was predicted before its label was known, so scoring that
prediction against the label is an honest online estimate of the model's error.
Kept cumulatively and over the last ``window`` examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_EPS = 1e-7


class PrequentialMetrics:
    """Accuracy and log-loss (classification) or MAE and RMSE (regression)."""

    def __init__(self, task: str, window: int) -> None:
        self.task = task
        self.window = window
        self.count = 0
        self._recent_n = 0
        self._sums = np.zeros(2, np.float64)
        self._recent = np.zeros((window, 2), np.float64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Score predictions ``scores`` ``[k, output_dim]`` against ``labels`` ``[k]``."""
        if len(labels) == 0:
            return
        per_example = self._per_example(scores, labels)
        self._sums += per_example.sum(axis=0)
        positions = (self._recent_n + np.arange(len(labels))) % self.window
        keep = slice(-self.window, None)
        self._recent[positions[keep]] = per_example[keep]
        self._recent_n += len(labels)
        self.count += len(labels)

    def summary(self) -> dict[str, float | int | None]:
        """Cumulative and last-window figures; None before the first example."""
        n_recent = min(self._recent_n, self.window)
        total = self._sums / self.count if self.count else np.full(2, math.nan)
        recent = self._recent[:n_recent].mean(axis=0) if n_recent else np.full(2, math.nan)
        if self.task == "classification":
            names = ("accuracy", "log_loss")
            return {"examples": self.count, **_named(names, total, ""), **_named(names, recent, "recent_")}
        return {
            "examples": self.count,
            "mae": _value(total[0]),
            "rmse": _value(math.sqrt(total[1])),
            "recent_mae": _value(recent[0]),
            "recent_rmse": _value(math.sqrt(recent[1])),
        }

    def _per_example(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.task == "classification":
            classes = labels.astype(np.int64)
            correct = (scores.argmax(axis=1) == classes).astype(np.float64)
            p = scores[np.arange(len(classes)), classes].astype(np.float64)
            return np.stack([correct, -np.log(np.clip(p, _EPS, 1.0))], axis=1)
        error = scores[:, 0].astype(np.float64) - labels
        return np.stack([np.abs(error), error**2], axis=1)

    def state_dict(self) -> dict[str, object]:
        """Counts and sums as tensors (loadable with ``weights_only=True``)."""
        return {
            "count": self.count,
            "recent_n": self._recent_n,
            "sums": torch.from_numpy(self._sums.copy()),
            "recent": torch.from_numpy(self._recent.copy()),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a :meth:`state_dict`; a different window size starts the window afresh."""
        self.count = int(state["count"])  # type: ignore[call-overload]  # an int in a state dict
        self._sums = state["sums"].numpy().copy()  # type: ignore[attr-defined]  # a tensor in a state dict
        recent = state["recent"].numpy()  # type: ignore[attr-defined]  # a tensor in a state dict
        if len(recent) == self.window:
            self._recent, self._recent_n = recent.copy(), int(state["recent_n"])  # type: ignore[call-overload]  # an int
        else:
            self._recent, self._recent_n = np.zeros((self.window, 2)), 0


def _named(names: tuple[str, str], values: np.ndarray, prefix: str) -> dict[str, float | None]:
    return {prefix + name: _value(v) for name, v in zip(names, values, strict=True)}


def _value(x: float) -> float | None:
    """JSON has no NaN: a figure not yet defined is None."""
    return None if math.isnan(x) else float(x)
