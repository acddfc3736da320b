"""The benchmark script runs end to end (tiny configuration) and prints every table, so it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
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
    headings = ("Catch-up throughput", "Latency at half the catch-up rate", "Event produced → read by the service → predicted → output record created", "CPU cores used while paced")
    for heading in (*headings, "Training", "Memory per pending join entry"):
        assert f"### {heading}" in out, out
    assert re.search(r"^\| linear \| 256 \| 256 \| 2,000 \| [\d,]+ \| [\d,]+ \| [\d.]+× \| 2,000 / 2,000 \|", out, re.M), out
    number = r"-?[\d,]+(?:\.\d+)?"  # 1,530.0 and -785.9 too: the figures depend on the machine
    assert re.search(rf"^\| linear \| 256 \| 256 \| [\d,]+(?: \| {number}){{6}} \|", out, re.M), out
    phases = rf"(?: {number} / {number} \|){{4}}"  # read, predicted, created; the pass-through's created
    assert re.search(rf"^\| linear \| 256 \| 256 \|{phases}$", out, re.M), out
    cores = r"\d\.\d\d / \d\.\d\d / \d\.\d\d \| \d\.\d\d"  # measured / load generator / broker | sum
    assert re.search(rf"^\| linear \| 256 \| 256 \| {cores} \| {cores} \|", out, re.M), out
    assert re.search(r"^\| 20,000 \| [\d.]+ \|", out, re.M), out
    assert "Trainer alone" in out


def test_process_cpu_seconds_counts_this_process_and_knows_no_missing_one() -> None:
    from benchmarks.run import process_cpu_seconds

    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = process_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after - before >= 0.2
    assert process_cpu_seconds(2**22 + 12345) is None  # above Linux's pid_max
    assert process_cpu_seconds(None) is None


def test_paced_runs_combine_into_medians_the_largest_max_and_summed_counts() -> None:
    from benchmarks.run import combine_runs

    runs = [
        {"rate": 100.0, "p50": 10.0, "p99": 50.0, "max": 90.0, "produced": 5, "received": 5, "cores": {"measured": 0.4, "broker": None}},
        {"rate": 102.0, "p50": 30.0, "p99": 70.0, "max": 80.0, "produced": 6, "received": 4, "cores": {"measured": 0.6, "broker": 0.5}},
        {"rate": 101.0, "p50": 20.0, "p99": 99.0, "max": 70.0, "produced": 7, "received": 7, "cores": {"measured": 0.5, "broker": 0.7}},
    ]
    combined = combine_runs(runs)
    assert combined == {
        "runs": 3, "rate": 101.0, "p50": 20.0, "p99": 70.0, "max": 90.0, "produced": 18, "received": 16,
        "cores": {"measured": 0.5, "broker": 0.6},
    }  # fmt: skip
    assert combine_runs([]) == {}


def test_catch_up_runs_combine_into_medians_and_the_fewest_labels_trained() -> None:
    from benchmarks.common import catch_up_ratio
    from benchmarks.run import combine_catch_ups

    runs = [
        {"rate": 30.0, "train_rate": 29.0, "trained": 100, "skipped": 0, "accuracy": 0.9},
        {"rate": 40.0, "train_rate": 41.0, "trained": 98, "skipped": 2, "accuracy": None},
        {"rate": 35.0, "train_rate": 33.0, "trained": 100, "skipped": 0, "accuracy": 0.8},
    ]
    combined = combine_catch_ups(runs)
    assert combined == {"rate": 35.0, "train_rate": 33.0, "trained": 98, "skipped": 2, "runs": 3, "accuracy": pytest.approx(0.85)}
    assert catch_up_ratio([0.7, 0.9, 0.75], 35.0, [50.0, 40.0]) == 0.75  # the paired ratios decide
    assert catch_up_ratio([], 36.0, [50.0, 40.0]) == 0.8  # older runs: one service run over the mean pass-through
