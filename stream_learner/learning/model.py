"""Built-in models, the online input standardizer, and device placement.

Every built-in model is a :class:`StandardizedModel`: a running mean/variance
standardizer (part of the saved state) in front of a network. A custom model is
named ``package.module:factory``; the factory gets the settings and returns an
``nn.Module`` mapping ``[B, input_dim]`` to ``[B, output_dim]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kernels.compiled import compiled

Moments = tuple[float, np.ndarray, np.ndarray]
"""``(count, mean, m2)`` of a :class:`Standardizer`, float64 on the host."""


class Standardizer(nn.Module):
    """Online per-feature standardization, ``(x - mean) / std``, updated by :meth:`update`.

    Uses Chan's parallel merge of batch moments, so a batch of any size updates it exactly.
    The buffers (``count``, ``mean``, ``m2``, float64) are the saved state; the merge runs
    on a host copy of them in a compiled loop (:func:`_merged_moments`), because a dozen
    torch ops on a ``[dim]`` vector cost more than the model step itself on small models,
    and the numpy ops that replaced them still took 50 µs a step.
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))
        self._host: Moments | None = None
        self._transform: tuple[torch.Tensor, torch.Tensor] | None = None
        self._host_transform: tuple[np.ndarray, np.ndarray] | None = None
        self._views: tuple[tuple[torch.Tensor, ...], tuple[np.ndarray, ...]] | None = None

    def update(self, x: torch.Tensor | np.ndarray) -> None:
        """Fold the rows of ``x`` into the running moments."""
        rows = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        if rows.shape[0] == 0:
            return
        count, mean, m2 = self.moments()
        # Non-finite rows give non-finite moments; the trainer puts the old ones back then.
        self.restore_moments(_merged_moments(rows, count, mean, m2))

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
        if views is not None:  # three torch ops cost 25 µs, as much as a small model's step
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
        seen = self._views[0] if self._views is not None else ()
        if len(seen) != 3 or seen[0] is not buffers[0] or seen[1] is not buffers[1] or seen[2] is not buffers[2]:
            on_cpu = all(b is not None and b.device.type == "cpu" for b in buffers)
            views = tuple(b.detach().numpy() for b in buffers) if on_cpu else ()  # type: ignore[union-attr]
            self.__dict__["_views"] = (buffers, views)
        return self._views[1] or None  # type: ignore[index]

    def std(self) -> torch.Tensor:
        """Current standard deviation per feature (1 before two rows were seen)."""
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt().clamp_min(self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or x.dtype != torch.float32:
            return ((x - self.mean.to(x.dtype)) / self.std().to(x.dtype)).clamp(-10.0, 10.0)
        mean, std = self._float32_transform()
        return ((x - mean) / std).clamp(-10.0, 10.0)

    def float32_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """The float32 mean and std that the forward pass uses, on the host; computed once per change of the moments."""
        if self._host_transform is None:
            self.__dict__["_host_transform"] = _float32_mean_std(*self.moments(), self.eps)
        return self._host_transform  # type: ignore[return-value]

    def _float32_transform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`float32_mean_std` as tensors on the buffers' device."""
        if self._transform is None:
            mean32, std32 = self.float32_mean_std()
            device = self.mean.device
            self.__dict__["_transform"] = (torch.from_numpy(mean32).to(device), torch.from_numpy(std32).to(device))
        return self._transform  # type: ignore[return-value]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._host = self._transform = self._host_transform = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._host = self._transform = self._host_transform = None
        super()._load_from_state_dict(*args, **kwargs)


@compiled(
    [
        "(float32[:, ::1], float64, float64[:], float64[:])",
        "(float32[:, :], float64, float64[:], float64[:])",
        "(float64[:, :], float64, float64[:], float64[:])",
    ],
    error_model="numpy",
)
def _merged_moments(
    rows: np.ndarray, count: float, mean: np.ndarray, m2: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Chan's merge of the moments of ``rows`` into ``(count, mean, m2)``, in float64: the new
    count, mean and m2. NaN and inf propagate into the moments.

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
def _float32_mean_std(
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


class StandardizedModel(nn.Module):
    """A standardizer followed by a network; the trainer updates the standardizer on each step."""

    def __init__(self, standardizer: Standardizer, net: nn.Module) -> None:
        super().__init__()
        self.standardizer = standardizer
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardizer(x))


def linear_model(settings: Settings) -> nn.Module:
    """Logistic / softmax regression, or linear regression, on standardized inputs."""
    net = nn.Linear(settings.input_dim, settings.output_dim)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    return StandardizedModel(Standardizer(settings.input_dim), net)


def mlp_model(settings: Settings) -> nn.Module:
    """Two hidden ReLU layers of ``hidden_dim`` units on standardized inputs."""
    h = settings.hidden_dim
    net = nn.Sequential(
        nn.Linear(settings.input_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, settings.output_dim)
    )
    return StandardizedModel(Standardizer(settings.input_dim), net)


BUILT_IN: dict[str, Callable[[Settings], nn.Module]] = {"linear": linear_model, "mlp": mlp_model}


def build_model(settings: Settings) -> nn.Module:
    """The model named by ``settings.model``, initialised from ``settings.seed``, checked for shape."""
    factory = BUILT_IN.get(settings.model) or _load_factory(settings.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = factory(settings)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {settings.model!r} returned {type(model).__name__}, not an nn.Module")
    _check_output_shape(model, settings)
    return model


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu; an unavailable cuda is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but torch sees no CUDA device")
    return device


def _load_factory(spec: str) -> Callable[[Settings], nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load model factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"model factory {spec!r} is not callable")
    return factory  # type: ignore[no-any-return]


def _check_output_shape(model: nn.Module, settings: Settings) -> None:
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, settings.input_dim))
    model.train()
    if tuple(out.shape) != (2, settings.output_dim):
        raise ConfigError(
            f"model {settings.model!r} maps [2, {settings.input_dim}] to {list(out.shape)}, "
            f"expected [2, {settings.output_dim}]"
        )
