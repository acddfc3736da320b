"""Built-in models, the online input standardizer, and device placement.

Every built-in model is a :class:`StandardizedModel`: a running mean/variance
standardizer (part of the saved state) in front of a network. A custom model is
named ``package.module:factory``; the factory gets the settings and returns an
``nn.Module`` mapping ``[B, input_dim]`` to ``[B, output_dim]``.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from .config import Settings
from .errors import ConfigError


class Standardizer(nn.Module):
    """Online per-feature standardization, ``(x - mean) / std``, updated by :meth:`update`.

    Uses Chan's parallel merge of batch moments, so a batch of any size updates it exactly.
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

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold the rows of ``x`` into the running moments."""
        if x.shape[0] == 0:
            return
        x = x.to(torch.float64)
        n_b = float(x.shape[0])
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        n_a = self.count.clone()
        total = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta**2 * (n_a * n_b / total)
        self.count.fill_(total)

    def std(self) -> torch.Tensor:
        """Current standard deviation per feature (1 before two rows were seen)."""
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt().clamp_min(self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean.to(x.dtype)) / self.std().to(x.dtype)).clamp(-10.0, 10.0)


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
