"""The online input standardizer in front of every built-in model.

Guarantees:
- Chan's parallel merge of batch moments: a batch of any size updates the running count,
  mean and sum of squared deviations (``m2``) exactly, in float64.
- The buffers ``count``, ``mean`` and ``m2`` are the saved state, the same whichever path
  computes the update (compiled loops, :mod:`stream_learner.kernels.moments`, or numpy), so a
  state saved with one loads into the other.
- Non-finite rows give non-finite moments; the trainer puts the old ones back then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import numpy as np
import torch
from torch import nn

from stream_learner.kernels import moments as compiled_moments

Moments = tuple[float, np.ndarray, np.ndarray]
"""``(count, mean, m2)`` of a :class:`Standardizer`, float64 on the host."""


class Standardizer(nn.Module):
    """Online per-feature standardization, ``clamp((x - mean) / std, -10, 10)``, updated by :meth:`update`.

    The merge runs on a host copy of the buffers, kept between steps: a step reads and writes
    the moments through it rather than through a dozen torch ops on ``[dim]`` vectors.
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-6, kernels: bool = True) -> None:
        """``kernels``: merge the moments in compiled loops; False: in numpy (the same results)."""
        super().__init__()
        self.eps = eps
        self.kernels = kernels
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))
        self._host: Moments | None = None
        self._transform: tuple[torch.Tensor, torch.Tensor] | None = None
        self._host_transform: tuple[np.ndarray, np.ndarray] | None = None
        self._views: tuple[tuple[torch.Tensor | None, ...], tuple[np.ndarray, ...]] | None = None

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Fold the rows of ``x`` into the running moments."""
        rows = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        if rows.shape[0] == 0:
            return
        merge = compiled_moments.merged_moments if self.kernels else merged_moments
        self.restore_moments(merge(rows, *self.moments()))

    def moments(self) -> Moments:
        """The current ``(count, mean, m2)``; never changed in place, so it doubles as a saved copy."""
        if self._host is None:
            self._host = (
                float(self.count),
                self.mean.detach().cpu().numpy().copy(),
                self.m2.detach().cpu().numpy().copy(),
            )
        return self._host

    def restore_moments(self, moments: Moments) -> None:
        """Set ``(count, mean, m2)``, e.g. back to what :meth:`moments` returned before an update."""
        count, mean, m2 = moments
        views = self._cpu_buffer_views()
        if views is not None:  # in place through numpy: no torch dispatch on the step's path
            views[0][...] = count
            views[1][:] = mean
            views[2][:] = m2
        else:
            self.count.fill_(count)
            self.mean.copy_(torch.from_numpy(mean))
            self.m2.copy_(torch.from_numpy(m2))
        # Plain attributes, set past nn.Module.__setattr__ (which costs more than the copies above).
        self.__dict__["_host"] = moments
        self.__dict__["_transform"] = self.__dict__["_host_transform"] = None

    def _cpu_buffer_views(self) -> tuple[np.ndarray, ...] | None:
        """numpy views of ``count``, ``mean`` and ``m2`` while they are the same CPU tensors, else None."""
        buffers = (self._buffers["count"], self._buffers["mean"], self._buffers["m2"])
        known = self._views
        if known is None or any(old is not new for old, new in zip(known[0], buffers, strict=True)):
            on_cpu = [b for b in buffers if b is not None and b.device.type == "cpu"]
            known = (buffers, tuple(b.detach().numpy() for b in on_cpu) if len(on_cpu) == 3 else ())
            self.__dict__["_views"] = known
        return known[1] or None

    def std(self) -> torch.Tensor:
        """Current standard deviation per feature (1 before two rows were seen)."""
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt().clamp_min(self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracing = torch.jit.is_tracing()  # type: ignore[attr-defined, no-untyped-call]  # untyped, not re-exported
        if tracing or x.dtype != torch.float32:
            return ((x - self.mean.to(x.dtype)) / self.std().to(x.dtype)).clamp(-10.0, 10.0)
        mean, std = self._float32_transform()
        return ((x - mean) / std).clamp(-10.0, 10.0)

    def float32_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """The float32 mean and std that the forward pass uses, on the host; computed once per change of the moments."""
        transform = self._host_transform
        if transform is None:
            compute = compiled_moments.float32_mean_std if self.kernels else float32_mean_std
            transform = compute(*self.moments(), self.eps)
            self.__dict__["_host_transform"] = transform
        return transform

    def _float32_transform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`float32_mean_std` as tensors on the buffers' device."""
        transform = self._transform
        if transform is None:
            mean32, std32 = self.float32_mean_std()
            device = self.mean.device
            transform = (torch.from_numpy(mean32).to(device), torch.from_numpy(std32).to(device))
            self.__dict__["_transform"] = transform
        return transform

    # private API: nn.Module's _apply and _load_from_state_dict; no public hook covers every move and load.
    # Every move or conversion of the buffers (to(), cuda(), double()) passes through _apply, and every load
    # through _load_from_state_dict: the host copies are dropped there. Tests restore and predict to check it.
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Self:
        self._host = self._transform = self._host_transform = None
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call, no-any-return]  # torch leaves it untyped

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._host = self._transform = self._host_transform = None
        super()._load_from_state_dict(*args, **kwargs)


def merged_moments(rows: np.ndarray, count: float, mean: np.ndarray, m2: np.ndarray) -> Moments:
    """Chan's merge of the moments of ``rows`` into ``(count, mean, m2)`` in numpy, float64."""
    with np.errstate(all="ignore"):  # NaN and inf propagate, as they do through the compiled loop
        batch = np.ascontiguousarray(rows, dtype=np.float64)
        k = batch.shape[0]
        total = count + k
        batch_mean = batch.sum(axis=0) / k
        centered = batch - batch_mean
        batch_m2 = (centered * centered).sum(axis=0)
        delta = batch_mean - mean
        return total, mean + delta * (k / total), m2 + batch_m2 + delta * delta * (count * k / total)


def float32_mean_std(count: float, mean: np.ndarray, m2: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The float32 mean and std (at least ``eps``; 1 before two rows; NaN stays NaN) in numpy."""
    with np.errstate(all="ignore"):
        std = np.sqrt(m2 / (count - 1)) if count >= 2 else np.ones_like(mean)
        return mean.astype(np.float32), np.maximum(std, eps).astype(np.float32)
