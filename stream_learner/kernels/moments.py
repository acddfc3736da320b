"""The standardizer's moments in compiled loops: Chan's merge of a batch, and the float32 transform.

Guarantees:
- The results of the numpy path in :mod:`stream_learner.learning.standardizer`, up to the order
  of float64 roundings (``tests/test_cpu_kernels.py`` compares them).
- NaN and inf in the rows propagate into the moments; no division raises.
"""

from __future__ import annotations

import numpy as np

from stream_learner.kernels.compiled import compiled


@compiled(
    [
        "(float32[:, ::1], float64, float64[:], float64[:])",
        "(float32[:, :], float64, float64[:], float64[:])",
        "(float64[:, :], float64, float64[:], float64[:])",
    ],
    error_model="numpy",
)
def merged_moments(
    rows: np.ndarray, count: float, mean: np.ndarray, m2: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Chan's merge of the moments of ``rows`` into ``(count, mean, m2)``, in float64: the new
    count, mean and m2.

    Row by row, each column summed in row order: the same sums as column by column, but the
    inner loop runs along memory and vectorizes."""
    k, dim = rows.shape
    total = count + k
    batch_mean, batch_m2 = np.zeros(dim), np.zeros(dim)
    for i in range(k):
        for j in range(dim):
            batch_mean[j] += np.float64(rows[i, j])
    for j in range(dim):
        batch_mean[j] /= k
    for i in range(k):
        for j in range(dim):
            centered = np.float64(rows[i, j]) - batch_mean[j]
            batch_m2[j] += centered * centered
    merged_mean, merged_m2 = np.empty(dim), np.empty(dim)
    for j in range(dim):
        delta = batch_mean[j] - mean[j]
        merged_mean[j] = mean[j] + delta * (k / total)
        merged_m2[j] = m2[j] + batch_m2[j] + delta * delta * (count * k / total)
    return total, merged_mean, merged_m2


@compiled("(float64, float64[:], float64[:], float64)", error_model="numpy")
def float32_mean_std(
    count: float, mean: np.ndarray, m2: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The float32 mean and std (at least ``eps``; 1 before two rows) that the forward pass uses."""
    dim = len(mean)
    mean32, std32 = np.empty(dim, np.float32), np.empty(dim, np.float32)
    for j in range(dim):
        mean32[j] = mean[j]
        std = np.sqrt(m2[j] / (count - 1)) if count >= 2 else 1.0
        std32[j] = eps if std < eps else std  # NaN stays NaN, as with np.maximum
    return mean32, std32
