"""The command line as a user runs it (child processes), and the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

import stream_learner
from stream_learner.checkpoint import CheckpointStore
from stream_learner.config import Settings
from stream_learner.service import Service
from stream_learner.snapshot import snapshot_state


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    return subprocess.run(
        [sys.executable, "-m", "stream_learner", *args], env={**clean, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def write_checkpoint(directory: Path, **settings: object) -> None:
    service = Service(Settings(input_dim=8, checkpoint_dir=directory, **settings))  # type: ignore[arg-type]
    CheckpointStore(directory, keep=3).write(snapshot_state(service))


def test_public_api_is_pinned() -> None:
    assert sorted(stream_learner.__all__) == [
        "CheckpointError",
        "CheckpointMismatchError",
        "ConfigError",
        "DeliveryError",
        "Service",
        "Settings",
        "StreamLearnerError",
        "load_settings",
    ]


def test_checkpoint_show_prints_the_contract_fields(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    result = cli("checkpoint", "show", "--json", env={"STREAM_LEARNER_CHECKPOINT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    for key in ("checkpoint_id", "created_at", "model_version", "events_predicted", "labels_joined", "examples_trained", "pending_events", "offsets"):
        assert key in shown, key
    assert shown["checkpoint_id"] == 1 and shown["model_version"] == 0 and shown["offsets"] == {}


def test_checkpoint_show_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    result = cli("checkpoint", "show", "--json", "--checkpoint-dir", str(tmp_path / "none"))
    assert result.returncode == 1 and "no checkpoint" in result.stderr


def test_run_refuses_a_checkpoint_of_another_shape(tmp_path: Path) -> None:
    write_checkpoint(tmp_path)
    result = cli("run", "--input-dim", "4", "--checkpoint-dir", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert "CheckpointMismatchError" in result.stderr and "input_dim" in result.stderr
    assert len(CheckpointStore(tmp_path, keep=3).paths()) == 1, "a refused start must not write a checkpoint"


def test_run_without_input_dim_names_the_missing_setting(tmp_path: Path) -> None:
    result = cli("run", "--checkpoint-dir", str(tmp_path))
    assert result.returncode == 2 and "input_dim" in result.stderr


def test_settings_come_from_env_dotenv_and_flags(tmp_path: Path, monkeypatch: object) -> None:
    (tmp_path / ".env").write_text("STREAM_LEARNER_INPUT_DIM=5\nSTREAM_LEARNER_MODEL=mlp\n")
    script = "from stream_learner.config import load_settings as l; s = l(['--model', 'linear']); print(s.input_dim, s.model, s.task)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**clean, "STREAM_LEARNER_TASK": "regression"}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5", "linear", "regression"]


def test_torch_threads_caps_torch_and_numpys_blas(tmp_path: Path) -> None:
    """Idle BLAS threads spin: with TORCH_THREADS=1 a service leaves numpy's BLAS one thread, as torch."""
    script = (
        "import torch; from threadpoolctl import threadpool_info; from stream_learner import Service, Settings; "
        f"Service(Settings(input_dim=8, checkpoint_dir={str(tmp_path)!r})); "
        "print(torch.get_num_threads(), sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_") and not k.endswith("_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", script], env={**clean, "STREAM_LEARNER_TORCH_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "[1]"]
