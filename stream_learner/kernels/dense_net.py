"""A stack of dense layers run and differentiated on the host, without autograd.

For a model on the CPU made of an optional :class:`~.model.Standardizer` and ``nn.Linear``
layers with ``nn.ReLU`` between them (both built-in models, and custom ones of that shape),
:class:`DenseNet` computes the scores, the loss and every parameter's gradient with numpy's
BLAS products and a few compiled loops, where torch's eager autograd spends its time on
per-operation dispatch, not arithmetic. The trainer uses it under ``CPU_KERNELS=auto``.

Guarantees:
- The parameters stay the model's own tensors: the forward pass reads their memory in place
  (the optimizer and ``load_state_dict`` update it in place; a model moved or converted after
  :meth:`DenseNet.of` needs a new one). The gradients land in buffers set as every parameter's
  ``p.grad`` at construction, where the optimizer takes them; nothing else may replace a
  ``p.grad`` afterwards (the trainer does not, on either outcome of a step).
- The same loss and gradients as autograd on that model, up to float32 rounding
  (``tests/test_dense_net.py`` compares them); a non-finite input gives a non-finite loss, and
  so does an example whose own loss is beyond float32's range (as torch's float32 loss would be
  infinite), even where the mean would fit. :meth:`DenseNet.example_losses` tells which they are.
- :meth:`DenseNet.of` returns None for anything else (other layers, hooks, a parameter that
  is frozen, shared, not float32 or not on the CPU), and the trainer keeps autograd then.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stream_learner.config_types import FLOAT32_LIMIT
from stream_learner.kernels.compiled import compiled
from stream_learner.kernels.losses import cross_entropy, softmax_in_place, squared_error
from stream_learner.learning.model import StandardizedModel
from stream_learner.learning.standardizer import Standardizer


@dataclass
class _Layer:
    """A linear layer's parameters and gradient buffers (its ``p.grad``), as numpy views."""

    linear: nn.Linear
    relu: bool
    """A ReLU follows the layer."""
    weight: np.ndarray
    bias: np.ndarray | None
    weight_grad_view: np.ndarray
    bias_grad_view: np.ndarray | None

    @classmethod
    def of(cls, linear: nn.Linear, relu: bool) -> _Layer:
        """The views of ``linear``, whose parameters get zeroed gradient buffers as ``grad``."""
        linear.weight.grad = torch.zeros_like(linear.weight)
        bias, bias_grad = None, None
        if linear.bias is not None:
            linear.bias.grad = torch.zeros_like(linear.bias)
            bias, bias_grad = linear.bias.detach().numpy(), linear.bias.grad.numpy()
        return cls(linear, relu, linear.weight.detach().numpy(), bias, linear.weight.grad.numpy(), bias_grad)


class DenseNet:
    """Scores, loss and gradients of a standardized Linear/ReLU stack, in numpy on the CPU."""

    def __init__(self, standardizer: Standardizer | None, layers: list[tuple[nn.Linear, bool]]) -> None:
        self._standardizer = standardizer
        self._layers = [_Layer.of(linear, relu) for linear, relu in layers]

    @classmethod
    def of(cls, model: nn.Module) -> DenseNet | None:
        """The dense net of ``model``, or None where its shape or its parameters do not qualify."""
        standardizer, net = (model.standardizer, model.net) if type(model) is StandardizedModel else (None, model)
        if standardizer is not None and type(standardizer) is not Standardizer:
            return None
        modules = list(net) if type(net) is nn.Sequential else [net]
        layers: list[tuple[nn.Linear, bool]] = []
        for module in modules:
            if type(module) is nn.Linear:
                layers.append((module, False))
            elif type(module) is nn.ReLU and layers and not layers[-1][1]:
                layers[-1] = (layers[-1][0], True)
            else:
                return None
        shared = len({id(linear) for linear, _ in layers}) != len(layers)
        if not layers or layers[-1][1] or shared or not _plain(model):
            return None
        return cls(standardizer, layers)

    def grad_views(self, params: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """numpy views of the gradient buffers of ``params`` (the model's, in any order)."""
        views = {}
        for layer in self._layers:
            views[id(layer.linear.weight)] = layer.weight_grad_view
            if layer.bias_grad_view is not None:
                views[id(layer.linear.bias)] = layer.bias_grad_view
        return [views[id(p)] for p in params]

    def scores(self, features: np.ndarray, softmax: bool) -> np.ndarray:
        """``[n, output_dim]`` float32: the model's output, or its softmax."""
        out = self._forward(features)[-1]
        if softmax:
            softmax_in_place(out)
        return out

    def loss_and_grads(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> tuple[float, float]:
        """The mean loss (cross-entropy, or squared error on output 0) and the gradients' total L2
        norm; every parameter's ``grad`` is set. Run after the standardizer's update, as autograd's step is."""
        activations = self._forward(features)
        out = activations[-1]
        delta = np.empty_like(out)
        targets = np.ascontiguousarray(labels, dtype=np.float64)
        loss = cross_entropy(out, targets, delta) if classification else squared_error(out, targets, delta)
        squares = 0.0
        for i in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[i]
            np.matmul(delta.T, activations[i], out=layer.weight_grad_view)
            squares += _sum_of_squares(layer.weight_grad_view.ravel())
            if layer.bias_grad_view is not None:
                _column_sums(delta, layer.bias_grad_view)
                squares += _sum_of_squares(layer.bias_grad_view)
            if i:
                delta = delta @ layer.weight
                if self._layers[i - 1].relu:
                    _relu_backward(delta, activations[i])
        return _float32_overflow(loss), _float32_overflow(math.sqrt(squares))

    def discard_grads(self) -> None:
        """Nothing: after a skipped step the gradient buffers stay attached, and the next step overwrites them."""

    def example_losses(self, features: np.ndarray, labels: np.ndarray, classification: bool) -> np.ndarray:
        """Each example's own loss, float64 ``[n]``, inf where it is beyond float32's range (NaN stays
        NaN): what :meth:`loss_and_grads` averages. In numpy, for the rare step whose mean is not finite."""
        out = self._forward(features)[-1]
        losses: np.ndarray
        with np.errstate(over="ignore", invalid="ignore"):
            if classification:
                logits = out.astype(np.float64)
                top = logits.max(axis=1)
                spread = np.log(np.exp(logits - top[:, None]).sum(axis=1))
                losses = spread + top - logits[np.arange(len(logits)), labels.astype(np.int64)]
            else:
                error = out[:, 0] - labels.astype(np.float32)
                losses = np.square(error.astype(np.float64))
            losses[losses >= FLOAT32_LIMIT] = np.inf
        return losses

    def _forward(self, features: np.ndarray) -> list[np.ndarray]:
        """The inputs of every layer, then the output: float32, C-contiguous."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if self._standardizer is not None:
            mean, std = self._standardizer.float32_mean_std()
            x = _standardized(x, mean, std)
        activations = [x]
        for layer in self._layers:
            h = x @ layer.weight.T
            _add_bias(h, layer.bias if layer.bias is not None else _NO_BIAS, layer.bias is not None, layer.relu)
            activations.append(h)
            x = h
        return activations


def _plain(model: nn.Module) -> bool:
    """CPU float32 parameters, all trained, none shared; no hooks on any module."""
    params = list(model.parameters())
    if len({p.data_ptr() for p in params}) != len(params):
        return False
    if not all(
        p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad and p.is_contiguous() for p in params
    ):
        return False
    # Private attributes of nn.Module, which has no public reader; tests/test_dense_net.py checks they are read.
    # private API: torch has no public way to list a module's hooks; every register_*hook stores them here.
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    modules = list(model.modules())
    if len({id(m) for m in modules}) != len(modules):
        return False
    return not any(getattr(m, name, None) for m in modules for name in hooks) and not _global_hooks()


def _global_hooks() -> bool:
    """Hooks registered for every module (``nn.modules.module.register_module_forward_hook`` and kin)."""
    from torch.nn.modules import module as torch_module

    # Private globals of torch, which has no public reader; tests/test_dense_net.py checks they are still read.
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(torch_module, name, None) for name in names)


_NO_BIAS = np.zeros(0, np.float32)


def _float32_overflow(value: float) -> float:
    """inf where ``value`` (a loss or a norm, not negative) is beyond float32's range, as autograd's would be."""
    return math.inf if value >= FLOAT32_LIMIT else value


@compiled("float32[:, ::1](float32[:, ::1], float32[::1], float32[::1])", error_model="numpy")
def _standardized(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """``clamp((x - mean) / std, -10, 10)`` in float32, as the standardizer's forward; NaN stays NaN."""
    n, dim = x.shape
    out = np.empty((n, dim), np.float32)
    for i in range(n):
        for j in range(dim):
            value = (x[i, j] - mean[j]) / std[j]
            if value < -10.0:
                value = np.float32(-10.0)
            elif value > 10.0:
                value = np.float32(10.0)
            out[i, j] = value
    return out


@compiled("void(float32[:, ::1], float32[::1], boolean, boolean)")
def _add_bias(h: np.ndarray, bias: np.ndarray, with_bias: bool, relu: bool) -> None:  # pragma: no cover - compiled
    """``h += bias``, then ReLU if asked, in place; NaN stays NaN (as torch's relu)."""
    n, width = h.shape
    for i in range(n):
        for j in range(width):
            value = h[i, j] + bias[j] if with_bias else h[i, j]
            if relu and value < 0.0:
                value = np.float32(0.0)
            h[i, j] = value


@compiled("void(float32[:, ::1], float32[:, ::1])")
def _relu_backward(delta: np.ndarray, output: np.ndarray) -> None:  # pragma: no cover - compiled
    """Zero the gradient where the ReLU's output is not positive."""
    n, width = delta.shape
    for i in range(n):
        for j in range(width):
            if not output[i, j] > 0.0:
                delta[i, j] = 0.0


@compiled("void(float32[:, ::1], float32[::1])")
def _column_sums(delta: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    n, width = delta.shape
    for j in range(width):
        out[j] = 0.0
    for i in range(n):
        for j in range(width):
            out[j] += delta[i, j]


@compiled("float64(float32[::1])", fastmath={"reassoc"})
def _sum_of_squares(values: np.ndarray) -> float:  # pragma: no cover - compiled
    """In float64, in any order (so it vectorizes); NaN and inf still propagate."""
    total = 0.0
    for i in range(values.shape[0]):
        value = np.float64(values[i])
        total += value * value
    return total
