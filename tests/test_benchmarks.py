"""The benchmark script runs end to end (tiny configuration) and prints every table, so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_benchmark_smoke_run_prints_every_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for heading in ("Catch-up throughput", "Latency at half the catch-up rate", "Training", "Memory per pending join entry"):
        assert f"### {heading}" in out, out
    assert re.search(r"^\| linear \| 256 \| 256 \| 2,000 \| [\d,]+ \| [\d,]+ \| [\d.]+× \| 2,000 / 2,000 \|", out, re.M), out
    number = r"-?[\d,]+(?:\.\d+)?"  # 1,530.0 and -785.9 too: the figures depend on the machine
    assert re.search(rf"^\| linear \| 256 \| 256 \| [\d,]+(?: \| {number}){{6}} \|", out, re.M), out
    assert re.search(r"^\| 20,000 \| [\d.]+ \|", out, re.M), out
    assert "Trainer alone" in out
