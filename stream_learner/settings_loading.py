"""Loading the settings: flags, environment, the env file ``STREAM_LEARNER_ENV_FILE`` names, defaults."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_learner.config import Settings
from stream_learner.errors import ConfigError

ENV_FILE_VARIABLE = "STREAM_LEARNER_ENV_FILE"
"""Names the env file to read; without it none is read."""


def load_settings(
    cli_args: Sequence[str] | None = None, prog: str = "stream-learner run", **overrides: Any
) -> Settings:
    """Build the settings from flags (when given), environment, the env file named by
    ``STREAM_LEARNER_ENV_FILE`` and defaults; raises :class:`ConfigError` when that file is not there."""
    env_file = named_env_file()
    if cli_args is None:
        return Settings(_env_file=env_file, **overrides)
    return Settings(_env_file=env_file, _cli_parse_args=list(cli_args), _cli_prog_name=prog, **overrides)


def named_env_file() -> Path | None:
    """The file ``STREAM_LEARNER_ENV_FILE`` names, or None when it is unset; raises :class:`ConfigError`
    when it names no readable file (pydantic-settings would skip a missing file without a word)."""
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named is None:
        return None
    path = Path(named)
    if not named.strip() or not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"{ENV_FILE_VARIABLE} names {named!r}, which is not a readable file")
    return path
