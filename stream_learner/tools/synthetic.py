"""A synthetic, learnable event stream whose concept drifts part-way (for the demo, tests, benchmarks).

Event ``i`` is a pure function of ``(seed, i)``: features are Gaussian with
per-feature offsets and scales (so standardizing matters), and the label is the
side of a hyperplane, flipped with probability ``noise``. From event
``drift_at`` on, a different hyperplane decides the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024


@dataclass(frozen=True)
class SyntheticBatch:
    """Events ``start .. start+n-1`` of the stream."""

    ids: list[str]
    features: np.ndarray
    labels: np.ndarray


class DriftingStream:
    """Deterministic binary classification stream with one abrupt concept drift."""

    def __init__(self, input_dim: int, *, seed: int = 7, drift_at: int | None = None, noise: float = 0.02) -> None:
        rng = np.random.default_rng(seed)
        self.input_dim, self.seed, self.noise = input_dim, seed, noise
        self.drift_at = drift_at
        self.offset = rng.normal(0, 3, input_dim)
        self.scale = rng.uniform(0.5, 5.0, input_dim)
        self.concepts = [rng.normal(0, 1, input_dim) for _ in range(2)]

    def batch(self, start: int, n: int) -> SyntheticBatch:
        """Events ``start`` to ``start + n - 1``, with their true labels (the same however the stream is cut)."""
        first, last = start // BLOCK, (start + n - 1) // BLOCK if n else start // BLOCK - 1
        blocks = [self._block(b) for b in range(first, last + 1)]
        z = (
            np.concatenate([b[0] for b in blocks])[start - first * BLOCK :][:n]
            if blocks
            else np.zeros((0, self.input_dim))
        )
        noise = np.concatenate([b[1] for b in blocks])[start - first * BLOCK :][:n] if blocks else np.zeros(0)
        index = np.arange(start, start + n)
        after_drift = index >= self.drift_at if self.drift_at is not None else np.zeros(n, bool)
        margin = np.where(after_drift, z @ self.concepts[1], z @ self.concepts[0])
        labels = (margin > 0).astype(np.int64)
        flip = noise < self.noise
        labels[flip] = 1 - labels[flip]
        features = (z * self.scale + self.offset).astype(np.float32)
        return SyntheticBatch([f"e-{i}" for i in index], features, labels)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, block])
        return rng.normal(0, 1, (BLOCK, self.input_dim)), rng.random(BLOCK)
