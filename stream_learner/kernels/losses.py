"""Softmax cross-entropy and squared error with their gradients by the model's output, and the softmax, in
compiled loops on float32 ``[n, width]`` outputs (the dense net's loss layer).

Guarantees:
- The loss is computed in float64 from float32 outputs, as torch's float32 loss up to rounding; a square
  beyond float32's range makes the squared error inf, as torch's float32 squares would.
- A label outside the classes raises IndexError, as torch's cross-entropy does.
- NaN and inf in the outputs propagate into the loss.
"""

from __future__ import annotations

import math

import numpy as np

from stream_learner.config_types import FLOAT32_LIMIT
from stream_learner.kernels.compiled import compiled


@compiled("float64(float32[:, ::1], float64[::1], float32[:, ::1])")
def cross_entropy(logits: np.ndarray, labels: np.ndarray, delta: np.ndarray) -> float:  # pragma: no cover - compiled
    """Mean softmax cross-entropy of integer ``labels``; ``delta`` gets its gradient by the logits."""
    n, classes = logits.shape
    if n == 0:
        return np.nan
    total = 0.0
    for i in range(n):
        label = int(labels[i])
        if label < 0 or label >= classes:
            raise IndexError("class label out of range")
        top = np.float64(logits[i, 0])
        for j in range(1, classes):
            if logits[i, j] > top:
                top = np.float64(logits[i, j])
        exp_sum = 0.0
        for j in range(classes):
            exp_sum += math.exp(np.float64(logits[i, j]) - top)
        total += math.log(exp_sum) + top - np.float64(logits[i, label])
        for j in range(classes):
            p = math.exp(np.float64(logits[i, j]) - top) / exp_sum
            delta[i, j] = (p - (1.0 if j == label else 0.0)) / n
    return total / float(n)


@compiled("float64(float32[:, ::1], float64[::1], float32[:, ::1])")
def squared_error(out: np.ndarray, targets: np.ndarray, delta: np.ndarray) -> float:  # pragma: no cover - compiled
    """Mean squared error of output 0 against ``targets`` (float32, as torch's mse_loss); ``delta`` gets its gradient.

    A square beyond float32's range makes the mean inf, as torch's float32 squares would."""
    n, width = out.shape
    if n == 0:
        return np.nan
    total = 0.0
    for i in range(n):
        error = out[i, 0] - np.float32(targets[i])
        square = np.float64(error) * np.float64(error)
        total += np.inf if square >= FLOAT32_LIMIT else square
        delta[i, 0] = 2.0 * error / n
        for j in range(1, width):
            delta[i, j] = 0.0
    return total / float(n)


@compiled("void(float32[:, ::1])")
def softmax_in_place(scores: np.ndarray) -> None:  # pragma: no cover - compiled
    n, classes = scores.shape
    for i in range(n):
        top = scores[i, 0]
        for j in range(1, classes):
            if scores[i, j] > top:
                top = scores[i, j]
        total = np.float32(0.0)
        for j in range(classes):
            scores[i, j] = np.exp(scores[i, j] - top)
            total += scores[i, j]
        for j in range(classes):
            scores[i, j] /= total
