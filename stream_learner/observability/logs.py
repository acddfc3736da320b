"""Log set-up for the command line: structlog, JSON lines unless stderr is a terminal.

Only the CLI calls :func:`configure_logging`; library code just logs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    """Send structured logs to stderr at ``level``; ``json`` defaults to "stderr is not a TTY"."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr)


class ProgressLog:
    """The ``progress`` log line, at most once every ``interval_s`` (``LOG_INTERVAL_S``)."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next = time.monotonic() + interval_s

    def maybe(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Log ``stats()`` if the interval passed since the last line (``stats`` is not called otherwise)."""
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self._interval_s
            structlog.get_logger("stream_learner.progress").info("progress", **stats())
