"""The command line as a user runs it (child processes), and the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import stream_learner
from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.service import Service

from .cuts import snapshot_state


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


def test_settings_come_from_flags_env_and_the_named_env_file(tmp_path: Path) -> None:
    (tmp_path / "settings.env").write_text("STREAM_LEARNER_INPUT_DIM=5\nSTREAM_LEARNER_MODEL=mlp\n")
    script = "from stream_learner.settings_loading import load_settings as l; s = l(['--model', 'linear']); print(s.input_dim, s.model, s.task)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    env = {**clean, "STREAM_LEARNER_TASK": "regression", "STREAM_LEARNER_ENV_FILE": str(tmp_path / "settings.env")}
    out = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5", "linear", "regression"]


def test_no_dotenv_is_read_from_the_working_directory(tmp_path: Path) -> None:
    """Where the working directory is writable (the image's was the checkpoint volume), a .env there
    must not change the settings: not those of `run`, nor the directory `checkpoint show` reads."""
    write_checkpoint(tmp_path / "real")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".env").write_text(f"STREAM_LEARNER_INPUT_DIM=8\nSTREAM_LEARNER_CHECKPOINT_DIR={tmp_path / 'elsewhere'}\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    def here(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stream_learner", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    run = here("run", env=clean)
    assert run.returncode == 2 and "input_dim" in run.stderr, run.stderr
    show = here("checkpoint", "show", "--json", env={**clean, "STREAM_LEARNER_CHECKPOINT_DIR": str(tmp_path / "real")})
    assert show.returncode == 0, show.stderr
    assert orjson.loads(show.stdout)["path"].startswith(str(tmp_path / "real"))


@pytest.mark.parametrize("command", [["run"], ["checkpoint", "show"]])
def test_a_named_env_file_that_is_missing_exits_2_naming_it(tmp_path: Path, command: list[str]) -> None:
    result = cli(*command, env={"STREAM_LEARNER_ENV_FILE": str(tmp_path / "missing.env"), "STREAM_LEARNER_INPUT_DIM": "8"})
    assert result.returncode == 2 and "STREAM_LEARNER_ENV_FILE" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--missing-label-policy", "default", "--default-label", "5"], {}, "default_label"),
        ([], {"STREAM_LEARNER_PREDICTIONS_TOPIC": "events"}, "predictions_topic"),
        (["--learning-rate", "inf"], {}, "learning_rate"),
        (["--bootstrap-servers", "kafka"], {}, "bootstrap_servers"),
        ([], {"STREAM_LEARNER_DEVICE": "gpu"}, "device"),
    ],
    ids=["default-label-beyond-the-classes", "predictions-into-events", "infinite-learning-rate", "server-without-port", "unknown-device"],
)
def test_run_with_an_impossible_setting_exits_2_naming_it(tmp_path: Path, args: list[str], env: dict[str, str], named: str) -> None:
    base = ["--input-dim", "8", "--checkpoint-dir", str(tmp_path), "--metrics-port", "0"]
    result = cli("run", *base, *args, env=env)
    assert result.returncode == 2, result.stderr
    assert "invalid settings" in result.stderr and named in result.stderr, result.stderr
    assert not any(tmp_path.iterdir()), "nothing starts"


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
