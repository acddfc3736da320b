"""The service as a real child process (``python -m stream_learner run``), for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson


class ServiceProcess:
    """One ``stream-learner run`` child with its settings in the environment and its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, crashing: bool = False) -> None:
        self.env = env
        self.log_path = log_path
        self.crashing = crashing
        """Run through tests/crash_run.py, which exits at the checkpoint step ``env["CRASH_AT"]`` names."""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ServiceProcess":
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_") and k != "CRASH_AT"}
        command = [str(Path(__file__).with_name("crash_run.py"))] if self.crashing else ["-m", "stream_learner"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *command, "run"] if not self.crashing else [sys.executable, *command],
                env={**clean, **self.env},
                stdout=log,
                stderr=log,
            )
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills and fails loudly past ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"service did not exit within {timeout}s of SIGTERM; log:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(orjson.loads(line))
        return out

    def wait_for_log(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.log_events():
                if entry.get("event") == event:
                    return entry
            if not self.alive():
                raise AssertionError(f"service exited before logging {event!r}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in the log within {timeout}s:\n{self.log_tail()}")


def checkpoint_show(checkpoint_dir: Path) -> dict[str, Any]:
    """``stream-learner checkpoint show --json``, parsed."""
    out = subprocess.run(
        [sys.executable, "-m", "stream_learner", "checkpoint", "show", "--json", "--checkpoint-dir", str(checkpoint_dir)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]
