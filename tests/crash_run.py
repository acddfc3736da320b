"""``stream-learner run`` that ends abruptly, as kill -9 would, at one checkpoint step.

``CRASH_AT=STEP:N`` names the step (drained, snapshot, written_temp, written, committed) of the
process's Nth checkpoint. The hook lives here, not in the package's settings, so no deployment
can set it: the crash tests start the service through this script instead of ``python -m stream_learner``.
"""

from __future__ import annotations

import os
import sys

import structlog

from stream_learner.tools import cli
from stream_learner.observability.telemetry import Telemetry


def _exit_at(target: str) -> None:
    def checkpoint_step(self: Telemetry, step: str, checkpoint: int) -> None:
        if f"{step}:{checkpoint}" == target:
            structlog.get_logger("crash_run").warning("crash_injected", step=step, checkpoint=checkpoint)
            os._exit(137)

    Telemetry.checkpoint_step = checkpoint_step  # type: ignore[method-assign]


if __name__ == "__main__":
    _exit_at(os.environ["CRASH_AT"])
    sys.exit(cli.main(["run", *sys.argv[1:]]))
