"""``stream-learner export``: the exported file scores like the live model (TorchScript; ONNX through onnxruntime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError, CheckpointMismatchError
from stream_learner.tools.export import export_model, load_torchscript, model_spec
from stream_learner.learning.join import Examples
from stream_learner.service import Service
from stream_learner.checkpointing.cut import model_spec as snapshot_model_spec
from .cuts import snapshot_state
from stream_learner.tools.synthetic import DriftingStream

from .test_cli import cli

INPUT_DIM = 8
ONNX_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]


def trained_service(directory: Path, steps: int = 25, **settings: object) -> Service:
    """A service whose model took ``steps`` optimizer steps on the drifting stream, checkpointed to ``directory``."""
    service = Service(Settings(input_dim=INPUT_DIM, checkpoint_dir=directory, **settings))  # type: ignore[arg-type]
    stream = DriftingStream(INPUT_DIM, seed=5)
    regression = service.settings.task == "regression"
    for step in range(steps):
        batch = stream.batch(step * 32, 32)
        labels = batch.features[:, 0].astype(np.float64) if regression else batch.labels.astype(np.float64)
        scores = np.zeros((32, service.settings.output_dim), np.float32)
        assert service.learner.trainer.learn_many(Examples(batch.features, labels, scores)) == service.learner.trainer.counters.last_loss
    assert service.learner.trainer.model_version == steps
    CheckpointStore(directory, keep=3).write(snapshot_state(service))
    return service


def probe_inputs() -> np.ndarray:
    """Unseen events, a single row's worth of odd values, and values far outside the standardizer's clamp."""
    stream = DriftingStream(INPUT_DIM, seed=5)
    rows = [stream.batch(10_000, 61).features, np.full((1, INPUT_DIM), 1e6, np.float32), np.zeros((1, INPUT_DIM), np.float32)]
    rows.append(np.random.default_rng(2).normal(0, 50, (1, INPUT_DIM)).astype(np.float32))
    return np.concatenate(rows)


def run_exported(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    if fmt == "torchscript":
        import torch

        module, _ = load_torchscript(path)
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert session.get_inputs()[0].shape[0] == "batch", "the batch axis must be dynamic"
    out: np.ndarray = session.run(["scores"], {"features": x})[0]
    return out


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_exported_model_scores_like_the_live_model(tmp_path: Path, model: str, fmt: str) -> None:
    if fmt == "onnx" and ONNX_MISSING:
        pytest.skip(f"ONNX export test needs {', '.join(ONNX_MISSING)} (pip install 'stream-learner[export]')")
    service = trained_service(tmp_path / "checkpoints", model=model)
    out = tmp_path / f"model.{fmt}"
    env = {"STREAM_LEARNER_INPUT_DIM": str(INPUT_DIM), "STREAM_LEARNER_MODEL": model}
    result = cli("export", "--format", fmt, "--out", str(out), "--json", "--checkpoint-dir", str(tmp_path / "checkpoints"), env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    assert info["model_version"] == 25 and info["verified"] is True and info["format"] == fmt
    assert (info["input_dim"], info["output_dim"], info["model"]) == (INPUT_DIM, 2, model)

    x = probe_inputs()
    live = service.learner.trainer.predict_many(x)
    exported = run_exported(fmt, out, x)
    assert exported.shape == live.shape == (len(x), 2)
    np.testing.assert_allclose(exported, live, atol=1e-5, rtol=0)
    assert len(set(np.round(live[:, 1], 3))) > 10, "the probe must exercise a trained model, not a constant one"
    single = run_exported(fmt, out, x[:1])
    np.testing.assert_allclose(single, live[:1], atol=1e-5, rtol=0)


def test_regression_exports_the_raw_output_with_metadata(tmp_path: Path) -> None:
    service = trained_service(tmp_path / "checkpoints", task="regression", model="mlp")
    info = export_model(service.settings, "torchscript", tmp_path / "reg.pt")
    x = probe_inputs()
    np.testing.assert_allclose(run_exported("torchscript", tmp_path / "reg.pt", x), service.learner.trainer.predict_many(x), atol=1e-5, rtol=0)
    _, metadata = load_torchscript(tmp_path / "reg.pt")
    assert metadata["task"] == "regression" and metadata["output_dim"] == 1 and metadata["model_version"] == info.model_version == 25


def test_export_refuses_a_checkpoint_of_another_shape_and_a_missing_one(tmp_path: Path) -> None:
    service = trained_service(tmp_path / "checkpoints", steps=1)
    assert model_spec is snapshot_model_spec, "export must check what run checks, with the same function"
    other = Settings(input_dim=INPUT_DIM, checkpoint_dir=tmp_path / "checkpoints", model="mlp")
    with pytest.raises(CheckpointMismatchError, match="model"):
        export_model(other, "torchscript", tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_model(Settings(input_dim=INPUT_DIM, checkpoint_dir=tmp_path / "empty"), "torchscript", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_export_cli_names_a_mismatch_with_exit_code_2(tmp_path: Path) -> None:
    trained_service(tmp_path, steps=1)
    result = cli("export", "--format", "torchscript", "--out", str(tmp_path / "m.pt"), "--input-dim", "4", "--checkpoint-dir", str(tmp_path))
    assert result.returncode == 2 and "CheckpointMismatchError" in result.stderr and "input_dim" in result.stderr


def poisoned_checkpoint(directory: Path) -> None:
    """A checkpoint whose model scores NaN: a file exported from it cannot pass verification."""
    import torch

    service = trained_service(directory, steps=1)
    with torch.no_grad():
        next(service.learner.trainer.model.parameters()).fill_(float("nan"))
    CheckpointStore(directory, keep=3).write(snapshot_state(service))


@pytest.mark.parametrize("existing", [False, True])
def test_a_file_that_fails_verification_is_never_left_under_its_name(tmp_path: Path, existing: bool) -> None:
    poisoned_checkpoint(tmp_path / "checkpoints")
    out = tmp_path / "models" / "model.pt"
    if existing:  # an earlier, good export stays as it was
        out.parent.mkdir()
        out.write_bytes(b"the earlier export")
    env = {"STREAM_LEARNER_INPUT_DIM": str(INPUT_DIM)}
    result = cli("export", "--format", "torchscript", "--out", str(out), "--checkpoint-dir", str(tmp_path / "checkpoints"), env=env, timeout=180)
    assert result.returncode != 0 and result.stdout == ""
    assert sorted(p.name for p in out.parent.iterdir()) == (["model.pt"] if existing else []), "no partial file either"
    if existing:
        assert out.read_bytes() == b"the earlier export"
    assert "failed verification" in result.stderr and f"{out} was not written" in result.stderr and "not finite" in result.stderr


def test_a_verified_export_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    trained_service(tmp_path / "checkpoints", steps=2)
    out = tmp_path / "model.pt"
    out.write_bytes(b"an older export")
    info = export_model(Settings(input_dim=INPUT_DIM, checkpoint_dir=tmp_path / "checkpoints"), "torchscript", out)
    assert info.verified and info.path == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "model.pt"]
    _, metadata = load_torchscript(out)
    assert metadata["model_version"] == 2 and metadata["path"] == str(out)
