"""``stream-learner export``: the latest checkpoint's model as one TorchScript or ONNX file.

The exported module maps float32 ``features [batch, input_dim]`` to ``scores
[batch, output_dim]``, exactly what the service publishes: class probabilities
(softmax) for classification, the raw output for regression. The online
standardizer is folded in with the moments it had at the checkpoint, so the file
needs nothing else: no stream_learner, no settings, no checkpoint.

The export checks itself: the file is loaded back and must give the live model's
scores on a random batch (ONNX when onnxruntime is installed). It is written under a
temporary name beside ``out`` and renamed to ``out`` only once it passed that check, so
a file that failed it never appears under its final name (and a file already there stays).
"""

from __future__ import annotations

import logging
import os
import secrets
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import torch
from torch import nn

from stream_learner.checkpointing.cut import model_spec
from stream_learner.checkpointing.store import CheckpointStore, fsync_path
from stream_learner.config import Settings
from stream_learner.config_types import DEFAULT_MODEL_NAME
from stream_learner.errors import CheckpointError, CheckpointMismatchError, ConfigError
from stream_learner.learning.model import StandardizedModel, Standardizer, build_model
from stream_learner.learning.model_set import member_settings

Format = Literal["torchscript", "onnx"]
FORMATS: tuple[Format, ...] = ("torchscript", "onnx")
INPUT_NAME, OUTPUT_NAME = "features", "scores"
METADATA_FILE = "stream_learner.json"
"""Name of the metadata entry in a TorchScript file's extra files."""
CHECK_ATOL = 1e-5


@dataclass(frozen=True)
class ExportInfo:
    """What was exported, also stored in the file (ONNX metadata, TorchScript extra file)."""

    format: str
    path: str
    checkpoint: str
    checkpoint_id: int
    model_version: int
    task: str
    model: str
    input_dim: int
    output_dim: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    verified: bool = False
    """Loaded back and compared with the live model (False: ONNX without onnxruntime)."""


class FrozenStandardizer(nn.Module):
    """A :class:`Standardizer`'s transform with its moments frozen as float32 constants."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, standardizer: Standardizer) -> None:
        super().__init__()
        with torch.no_grad():
            # The same conversions as Standardizer.forward on float32 input, so outputs match bit for bit.
            self.register_buffer("mean", standardizer.mean.detach().to(torch.float32).clone())
            self.register_buffer("std", standardizer.std().detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).clamp(-10.0, 10.0)


class FrozenTarget(nn.Module):
    """A regression target's standardization undone, its moments frozen as float32 constants (as the trainer)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, target: Standardizer) -> None:
        super().__init__()
        mean, std = target.float32_mean_std()
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("std", torch.from_numpy(std.copy()))

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.std + self.mean


class ScoringModule(nn.Module):
    """The model as the service scores with it: ``features -> scores`` (probabilities or regression output)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.target: nn.Module = nn.Identity()
        if isinstance(model, StandardizedModel):
            self.standardizer: nn.Module = FrozenStandardizer(model.standardizer)
            self.net = model.net
            if model.target is not None and task == "regression":
                self.target = FrozenTarget(model.target)
        else:
            self.standardizer = nn.Identity()
            self.net = model
        self.classification = task == "classification"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(self.standardizer(features)).float()
        return torch.softmax(out, dim=1) if self.classification else self.target(out)


def load_latest_model(settings: Settings) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model built from ``settings`` with the weights of the newest checkpoint in ``settings.checkpoint_dir``.

    Returns the model (CPU, eval mode), the checkpoint's state and its path. A checkpoint for
    another task or shape is refused like ``run`` refuses it.
    """
    loaded = CheckpointStore(settings.checkpoint_dir, keep=settings.keep_checkpoints).load_latest()
    if loaded is None:
        raise CheckpointError(f"no checkpoint in {settings.checkpoint_dir} to export")
    saved, wanted = loaded.state.get("model_spec", {}), model_spec(settings)
    if saved != wanted:
        diff = {k: (saved.get(k), wanted[k]) for k in wanted if saved.get(k) != wanted[k]}
        raise CheckpointMismatchError(
            f"the newest checkpoint does not fit the settings (checkpoint vs settings: {diff}); "
            "export with the settings the service ran with"
        )
    member, trainer_state = _serving_member(settings, loaded.state["trainer"])
    model = build_model(member)
    try:
        model.load_state_dict(trainer_state["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointMismatchError(f"the checkpoint's model state does not fit the model: {exc}") from exc
    return model.eval(), loaded.state, loaded.path


def _serving_member(settings: Settings, state: dict[str, Any]) -> tuple[Settings, dict[str, Any]]:
    """The settings and trainer state of the model that served: the default one, or a promoted challenger
    (which must still be among ``settings.challengers``, for its settings)."""
    if settings.challengers and settings.selection == "average":
        raise ConfigError("an export holds one model; under SELECTION=average the service serves several")
    champion = state.get("contest", {}).get("champion", DEFAULT_MODEL_NAME)
    if champion == DEFAULT_MODEL_NAME:
        return settings, state
    spec = next((c for c in settings.challengers if c.label == champion), None)
    if spec is None:
        raise CheckpointMismatchError(
            f"the checkpoint's champion is the challenger {champion!r}, which CHALLENGERS no longer names; "
            "export with the settings the service ran with"
        )
    return member_settings(settings, spec), state["challengers"][champion]


def export_model(settings: Settings, fmt: Format, out: Path) -> ExportInfo:
    """Export the newest checkpoint's model to ``out`` as ``fmt``; verifies the file and returns what it holds.

    ``out`` appears (or is replaced) only once the file verified and was fsynced: it is written
    under a temporary name in ``out``'s directory and renamed. An export that fails, in writing
    or in verification (:class:`ConfigError`, with the reason), leaves nothing new behind.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {FORMATS}, got {fmt!r}")
    model, state, path = load_latest_model(settings)
    member, member_state = _serving_member(settings, state["trainer"])
    module = ScoringModule(model, settings.task).eval()
    info = ExportInfo(
        format=fmt,
        path=str(out),
        checkpoint=str(path),
        checkpoint_id=int(state["checkpoint_id"]),
        model_version=int(member_state["counters"]["optimizer_steps"]),
        task=settings.task,
        model=member.model,
        input_dim=settings.input_dim,
        output_dim=settings.output_dim,
    )
    example = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (3, settings.input_dim)).astype(np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(out)
    try:
        if fmt == "torchscript":
            _export_torchscript(module, example, partial, info)
        else:
            _export_onnx(module, example, partial, info)
        verified = _verify(module, fmt, partial, settings.input_dim, out)
        fsync_path(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    fsync_path(out.parent)
    return ExportInfo(**{**asdict(info), "verified": verified})


def _partial_path(out: Path) -> Path:
    """A fresh hidden name beside ``out`` (same directory, so the rename is atomic), ending like ``out``."""
    return out.with_name(f".{out.stem}.{secrets.token_hex(4)}.partial{out.suffix}")


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript export and its metadata (torch marks ``torch.jit`` deprecated; the warning is silenced here)."""
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)  # type: ignore[no-untyped-call]  # torch.jit.load is not annotated
    return module, orjson.loads(extra[METADATA_FILE] or b"{}")


def _export_torchscript(module: ScoringModule, example: torch.Tensor, out: Path, info: ExportInfo) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        checks = [(example[:1],), (torch.cat([example] * 3),)]
        traced = torch.jit.trace(module, example, check_inputs=checks)  # type: ignore[no-untyped-call]  # torch.jit.trace is not annotated
        traced.save(str(out), _extra_files={METADATA_FILE: orjson.dumps(asdict(info))})


def _export_onnx(module: ScoringModule, example: torch.Tensor, out: Path, info: ExportInfo) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'stream-learner[export]'"
        ) from exc
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notes and the like
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.export's internal FutureWarnings
            torch.onnx.export(
                module,
                (example,),
                str(out),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs onnxscript: pip install 'stream-learner[export]' ({exc})") from exc
    finally:
        onnx_logger.setLevel(level)
    proto = onnx.load(str(out))
    for key, value in asdict(info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"stream_learner.{key}", str(value)
    proto.producer_name = "stream_learner"
    onnx.save(proto, str(out))


def _verify(module: ScoringModule, fmt: Format, path: Path, input_dim: int, out: Path) -> bool:
    """Run the file at ``path`` on a batch the trace never saw and compare with the live module.

    Returns False where it cannot check (ONNX without onnxruntime); raises :class:`ConfigError`
    with the reason when the file does not give the live model's scores, or when those are not
    finite (a model that scores NaN is no model to ship). ``out`` only names the file in the message.
    """
    x = np.random.default_rng(1).normal(0, 3, (5, input_dim)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    if fmt == "torchscript":
        loaded, _ = load_torchscript(path)
        with torch.no_grad():
            got = loaded(torch.from_numpy(x)).numpy()
    else:
        try:
            import onnxruntime
        except ImportError:
            return False
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    reason = _mismatch(got, expected)
    if reason is not None:
        raise ConfigError(f"the exported {fmt} model failed verification, so {out} was not written: {reason}")
    return True


def _mismatch(got: np.ndarray, expected: np.ndarray) -> str | None:
    """Why the exported scores ``got`` do not stand for the live model's ``expected`` ones; None when they do."""
    if not np.isfinite(expected).all():
        return "the live model's scores are not finite (the checkpoint's weights or standardizer hold NaN or infinity)"
    if got.shape != expected.shape:
        return f"it scores shape {got.shape}, the live model {expected.shape}"
    if not np.allclose(got, expected, atol=CHECK_ATOL, rtol=0):
        return (
            f"it does not reproduce the live model's scores (largest difference {np.abs(got - expected).max():.3g}); "
            "the model may hold input-dependent control flow that tracing cannot capture"
        )
    return None
