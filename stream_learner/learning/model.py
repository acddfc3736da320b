"""Built-in models, custom model factories, and device placement.

Every built-in model is a :class:`StandardizedModel`: a running mean/variance
standardizer (:mod:`.standardizer`, part of the saved state) in front of a network; its
moments merge in compiled loops unless ``CPU_KERNELS=off``, with the same saved state either way.
A custom model is named ``package.module:factory``; the factory gets the settings and returns an
``nn.Module`` mapping ``[B, input_dim]`` to ``[B, output_dim]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.learning.standardizer import Standardizer as Standardizer  # also importable from here


class StandardizedModel(nn.Module):
    """A standardizer followed by a network; the trainer updates the standardizer on each step.

    For regression ``target`` standardizes the labels the same way: the network learns in standardized
    units, and the trainer turns its output back into the target's units (``target`` is part of the
    state, so a checkpoint or a published version carries it)."""

    standardizer: Standardizer
    net: nn.Module
    target: Standardizer | None

    def __init__(self, standardizer: Standardizer, net: nn.Module, target: Standardizer | None = None) -> None:
        super().__init__()
        self.standardizer = standardizer
        self.net = net
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.standardizer(x))
        return out


def linear_model(settings: Settings) -> nn.Module:
    """Logistic / softmax regression, or linear regression, on standardized inputs."""
    net = nn.Linear(settings.input_dim, settings.output_dim)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)
    return StandardizedModel(_standardizer(settings), net, _target(settings))


def mlp_model(settings: Settings) -> nn.Module:
    """Two hidden ReLU layers of ``hidden_dim`` units on standardized inputs."""
    h = settings.hidden_dim
    net = nn.Sequential(
        nn.Linear(settings.input_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, settings.output_dim)
    )
    return StandardizedModel(_standardizer(settings), net, _target(settings))


def _standardizer(settings: Settings) -> Standardizer:
    return Standardizer(settings.input_dim, kernels=settings.cpu_kernels == "auto")


def _target(settings: Settings) -> Standardizer | None:
    return Standardizer(1, kernels=settings.cpu_kernels == "auto") if settings.task == "regression" else None


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
        factory: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load model factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"model factory {spec!r} is not callable")
    return cast(Callable[[Settings], nn.Module], factory)  # what it returns is checked by build_model


def _check_output_shape(model: nn.Module, settings: Settings) -> None:
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, settings.input_dim))
    model.train()
    if tuple(out.shape) != (2, settings.output_dim):
        raise ConfigError(
            f"model {settings.model!r} maps [2, {settings.input_dim}] to {list(out.shape)}, "
            f"expected [2, {settings.output_dim}]"
        )
