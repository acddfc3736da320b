"""One command for every figure in ``docs/benchmarks.md``.

    .venv/bin/python -m benchmarks.run            # full: about 40 minutes on 2 cores
    .venv/bin/python -m benchmarks.run --quick    # smaller run: about 8 minutes

For each row, starts an embedded broker of its own (Tansu, in memory), pre-fills the topics,
and runs, side by side in this one process:

1. catch-up: the service (``stream_learner.service.Service``, in-process) over pre-filled
   events and a label for every one of them, timed from its first prediction to its last
   prediction or optimizer step (whichever is later), beside the bare pass-through
   (``benchmarks.passthrough``) over the same events, before and after each service run
   (``catch_up_repeats`` service runs; the ratio is the median of each run's ratio to the
   pass-through runs on either side of it);
2. latency: a producer in a child process paced at half the catch-up rate, event produced ->
   prediction received, beside the pass-through at the same rate (``latency_repeats`` runs of
   each, alternating; medians);
3. training: examples trained per second in catch-up, and the lag from a label meeting its
   event to the end of the optimizer step that uses it (in the paced run); the trainer alone;
4. memory: bytes per pending join entry (features of dim 32).

For each model (``linear``, ``mlp``), micro-batch size (``MAX_BATCH_SIZE``: 1, 32, 256,
1024; batch size 1 is what a per-record implementation does, so it runs over fewer events) and
training step (``TRAIN_BATCH_SIZE``: the same as the micro-batch, and the default 32).
Everything else is the service's default. Prints markdown tables; ``--json PATH`` also
writes the raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics
from stream_learner.config import Settings
from stream_learner.learning.join import Examples
from stream_learner.learning.model import build_model
from stream_learner.tools.process import freeze_startup_heap
from stream_learner.service import Service
from stream_learner.learning.trainer import Trainer

from .common import DLQ, INPUT_DIM, PARTITIONS, SHUTDOWN_ERRORS, catch_up_ratio, every_label_stepped, make_stream, p99_gap, percentiles, prefill, report
from .common import bench_settings as _settings
from .common import fmt as _fmt
from .common import labels_used as _labels_used
from .common import output_window as _window
from .common import progress_log as _progress
from .common import quiet_logs as _quiet_logs
from .common import stop_service as _stop
from .common import unique_name as _name
from .memory import bytes_per_pending_entry
from .passthrough import passthrough
from .kernels import single_off
from .probe import LatencyProbe, TrainingProbe

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mode:
    events: int
    events_batch1: int
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    duration_s: float
    warmup_s: float
    catch_up_repeats: int
    """Catch-up runs of the service per row, each between two runs of the pass-through. On 2 shared
    cores one row's pass-through moved from 59k to 41k events/s between two runs."""
    memory_entries: int
    trainer_seconds: float = 2.0
    train_batch_sizes: tuple[str, ...] = ("same", "32")
    """``TRAIN_BATCH_SIZE`` per row: a number, or ``same`` (= ``MAX_BATCH_SIZE``, as a per-record
    implementation trains one record per step at batch size 1)."""
    latency_repeats: int = 1
    """Paced runs of the service and of the pass-through per row, alternating; the table shows
    medians. On 2 shared cores one run's p99 moved by tens of milliseconds from run to run."""


MODES = {
    "full": Mode(200_000, 20_000, ("linear", "mlp"), (1, 32, 256, 1024), 6.0, 1.5, 2, 200_000, latency_repeats=3),
    "quick": Mode(40_000, 4_000, ("linear", "mlp"), (1, 256), 5.0, 1.5, 1, 200_000, latency_repeats=2),
    "smoke": Mode(2_000, 500, ("linear",), (256,), 1.5, 0.3, 1, 20_000, 0.3, ("same",)),
}


@dataclass
class Row:
    model: str
    batch: int
    events: int
    train_batch: int
    kernels: str = "auto"
    """``auto`` or ``off`` (``CPU_KERNELS``), or ``<name>-off``: one fast path of :data:`kernels.SINGLE` off."""
    catch_up: dict[str, Any] = field(default_factory=dict)
    """The service's catch-up runs combined (:func:`combine_catch_ups`); ``catch_up_runs`` holds each."""
    catch_up_runs: list[dict[str, Any]] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    """Each catch-up run's rate over the mean of the pass-through runs just before and after it."""
    latency: dict[str, Any] = field(default_factory=dict)
    """The service's paced runs combined (:func:`combine_runs`); ``latency_runs`` holds each."""
    passthrough_latency: dict[str, Any] = field(default_factory=dict)
    latency_runs: list[dict[str, Any]] = field(default_factory=list)
    passthrough_latency_runs: list[dict[str, Any]] = field(default_factory=list)
    p99_gaps: list[float] = field(default_factory=list)
    """Service p99 minus pass-through p99 of each pair of paced runs (run back to back)."""
    passthrough: list[float] = field(default_factory=list)
    """Pass-through catch-up rates over the same events on the same broker (before, between and after the service's)."""

    @property
    def label(self) -> str:
        """The model, and the fast paths where not all are on."""
        return self.model if self.kernels == "auto" else f"{self.model} (kernels {self.kernels})"


async def _wait_assigned(service: Service, task: asyncio.Task[None], partitions: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if task.done():
            task.result()
        if service.status.health()["assigned_partitions"] >= partitions:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the service was not assigned its partitions")


async def service_catch_up(
    bootstrap: str, events: str, labels: str, n: int, model: str, batch: int, tmp: Path, train_batch: int = 32,
    kernels: str = "auto", **extra: Any,
) -> dict[str, Any]:
    """``extra``: any other setting (``kafka_client``, ``delivery``...)."""
    single = tuple(k.removesuffix("-off") for k in (kernels,) if k.endswith("-off"))
    with single_off(single):
        return await _service_catch_up(bootstrap, events, labels, n, model, batch, tmp, train_batch, kernels, extra)


async def _service_catch_up(
    bootstrap: str, events: str, labels: str, n: int, model: str, batch: int, tmp: Path, train_batch: int, kernels: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    outputs = _name("predictions")
    await ensure_topics(bootstrap, {outputs: PARTITIONS})
    checkpoints = tmp / uuid.uuid4().hex
    settings = _settings(bootstrap, events, labels, outputs, model, batch, checkpoints, train_batch, kernels, **extra)
    service = Service(settings)
    probe = TrainingProbe(service)
    freeze_startup_heap()  # as `stream-learner run` does
    task = asyncio.create_task(service.run())
    deadline = time.monotonic() + max(120.0, n / 200)
    predicted_at = None
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if task.done():
                task.result()
                raise RuntimeError("the service stopped by itself")
            if predicted_at is None and service.totals["events_predicted"] >= n:
                predicted_at = time.monotonic()
            if predicted_at is not None and (
                _labels_used(service) >= n or time.monotonic() - predicted_at > 30
            ):
                break
        else:
            raise TimeoutError(f"catch-up of {n} events did not finish: {service.status.stats()}")
    finally:
        await _stop(service, task)
        probe.close()
    window = await _window(bootstrap, outputs, n)
    stats = service.status.stats()
    # Done when the last event is predicted and the last label trained, whichever comes later.
    seconds = max(window["last"], probe.last_step_wall) - window["first"]
    return {
        **window,
        "predict_rate": window["rate"],
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else math.nan,
        "trained": stats["examples_trained"],
        "skipped": stats["examples_skipped"],
        "joined": stats["labels_joined"],
        "train_rate": probe.examples_per_s(),
        "accuracy": stats.get("prequential_accuracy"),
    }


async def passthrough_catch_up(bootstrap: str, events: str, n: int, tmp: Path) -> dict[str, Any]:
    outputs = _name("passthrough")
    await ensure_topics(bootstrap, {outputs: PARTITIONS})
    await passthrough(_settings(bootstrap, events, _name("labels"), outputs, "linear", 1, tmp), expected=n)
    return await _window(bootstrap, outputs, n)


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``); None where unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _CpuWindow:
    """CPU cores this process and the broker used between :meth:`start` and :meth:`stop`."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.cores: dict[str, float | None] = {}

    def start(self) -> None:
        self._at, self._own, self._broker = time.monotonic(), time.process_time(), process_cpu_seconds(self.broker_pid)

    def stop(self) -> None:
        wall = time.monotonic() - self._at
        broker = process_cpu_seconds(self.broker_pid)
        self.cores = {
            "measured": (time.process_time() - self._own) / wall,
            "broker": None if broker is None or self._broker is None else (broker - self._broker) / wall,
        }


async def _loadgen(
    bootstrap: str, events: str, labels: str, outputs: str, rate: float, mode: Mode, broker_pid: int | None = None
) -> dict[str, Any]:
    """Run the paced load generator; its result, plus the CPU cores each process used while it paced."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.loadgen",
        "--bootstrap", bootstrap, "--events", events, "--labels", labels, "--outputs", outputs,
        "--rate", f"{rate:.1f}", "--duration", str(mode.duration_s), "--warmup", str(mode.warmup_s),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    window, last = _CpuWindow(broker_pid), b""
    async for line in proc.stdout:
        if line.strip():
            last = line
        phase = orjson.loads(line).get("phase") if line.startswith(b'{"phase"') else None
        if phase == "producing":
            window.start()
        elif phase == "produced":
            window.stop()
    if await proc.wait() != 0:
        raise RuntimeError(f"loadgen failed with exit code {proc.returncode}")
    result = orjson.loads(last)
    return {**result, "cores": {**window.cores, "loadgen": result.pop("cores", None)}}


async def _fresh_topics(bootstrap: str) -> tuple[str, str, str]:
    events, labels, outputs = _name("live-events"), _name("live-labels"), _name("live-outputs")
    await ensure_topics(bootstrap, {events: PARTITIONS, labels: PARTITIONS, outputs: PARTITIONS})
    return events, labels, outputs


async def service_latency(
    bootstrap: str, model: str, batch: int, rate: float, mode: Mode, tmp: Path, train_batch: int = 32, broker_pid: int | None = None
) -> dict[str, Any]:
    events, labels, outputs = await _fresh_topics(bootstrap)
    service = Service(_settings(bootstrap, events, labels, outputs, model, batch, tmp / uuid.uuid4().hex, train_batch))
    probe = TrainingProbe(service)
    phases = LatencyProbe(service, mode.warmup_s)
    freeze_startup_heap()  # as `stream-learner run` does
    task = asyncio.create_task(service.run())
    try:
        await _wait_assigned(service, task, 2 * PARTITIONS)
        await asyncio.sleep(0.5)
        result = await _loadgen(bootstrap, events, labels, outputs, rate, mode, broker_pid)
    finally:
        await _stop(service, task)
        probe.close()
    lags = percentiles(probe.lag_array())
    read, predicted = percentiles(phases.to_read()), percentiles(phases.to_predicted())
    return {**result, "to_read": read, "to_predicted": predicted, "train_lag": lags, "trained": service.learner.trainer.counters.examples_trained}


async def passthrough_latency(bootstrap: str, rate: float, mode: Mode, tmp: Path, broker_pid: int | None = None) -> dict[str, Any]:
    events, labels, outputs = await _fresh_topics(bootstrap)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(
        passthrough(_settings(bootstrap, events, labels, outputs, "linear", 1, tmp), stop=stop, ready=ready, idle_timeout_s=math.inf)
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(0.5)
        return await _loadgen(bootstrap, events, labels, outputs, rate, mode, broker_pid)
    finally:
        stop.set()
        await task


def trainer_alone(model: str, seconds: float = 2.0) -> float:
    """Examples per second of ``Trainer.learn_many`` on steps of TRAIN_BATCH_SIZE, nothing else running."""
    settings = Settings(_env_file=None, input_dim=INPUT_DIM, model=model)  # type: ignore[call-arg]
    trainer = Trainer(build_model(settings), settings, torch.device("cpu"))
    rng = np.random.default_rng(0)
    k = settings.train_batch_size
    steps = [
        Examples(rng.normal(size=(k, INPUT_DIM)).astype(np.float32), rng.integers(0, 2, k).astype(np.float64), np.full((k, 2), 0.5, np.float32))
        for _ in range(64)
    ]
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for examples in steps:
            trainer.learn_many(examples)
        done += len(steps) * k
    return done / (time.perf_counter() - started)


def _skipped(catch_up: dict[str, Any]) -> str:
    skipped = catch_up.get("skipped", 0)
    return f" (+{skipped:,} skipped by the guardrail)" if skipped else ""


def _phases_table(rows: list[Row]) -> list[str]:
    """Where the latency passes: before the service reads an event, until its prediction, until the
    output record is created (its Kafka CreateTime), beside the pass-through's last."""
    paced = [r for r in rows if r.latency.get("to_created")]
    if not paced:
        return []
    out = [
        "",
        "### Event produced → read by the service → predicted → output record created (ms, p50 / p99; the rest is delivery to the reader)",
        "",
        "| model | MAX_BATCH_SIZE | TRAIN_BATCH_SIZE | service: read | predicted | created | pass-through: created |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in paced:
        phases = [r.latency.get("to_read"), r.latency.get("to_predicted"), r.latency["to_created"], r.passthrough_latency.get("to_created")]
        cells = [f"{_fmt(p.get('p50'), 1)} / {_fmt(p.get('p99'), 1)}" if p else "-" for p in phases]
        out.append(f"| {r.label} | {r.batch} | {r.train_batch} | {' | '.join(cells)} |")
    return out


def _cpu_table(rows: list[Row]) -> list[str]:
    """CPU cores each process used while the load was paced: what the latency runs shared."""
    paced = [r for r in rows if r.latency.get("cores")]
    if not paced:
        return []
    out = ["", f"### CPU cores used while paced (measured process / load generator / broker; {os.cpu_count()} cores in all)", ""]
    out += ["| model | MAX_BATCH_SIZE | TRAIN_BATCH_SIZE | service run | sum | pass-through run | sum |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in paced:
        cells = []
        for run in (r.latency, r.passthrough_latency):
            c = run.get("cores", {})
            parts = [c.get("measured"), c.get("loadgen"), c.get("broker")]
            total = sum(x for x in parts if x is not None)
            cells += [" / ".join(_fmt(x, 2) for x in parts), _fmt(total, 2)]
        out.append(f"| {r.label} | {r.batch} | {r.train_batch} | {' | '.join(cells)} |")
    return out


def render(rows: list[Row], memory: dict[int, float], alone: dict[str, float], settings: Settings) -> str:
    delay = settings.max_batch_delay_ms
    runs = max((len(r.ratios) for r in rows), default=0)
    per_run = f"; medians of {runs} service runs, each between two pass-through runs, and the range of their ratios" if runs > 1 else ""
    out = [f"### Catch-up throughput (events/s, first prediction to the last prediction or optimizer step, whichever is later{per_run})", ""]
    out += [
        "| model | MAX_BATCH_SIZE | TRAIN_BATCH_SIZE | events | service | pass-through | ratio | labels trained | target ≥ 0.8× |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        pt = float(np.mean(r.passthrough))
        c = r.catch_up
        ratio = catch_up_ratio(r.ratios, c["rate"], r.passthrough)
        spread = f" ({min(r.ratios):.2f}–{max(r.ratios):.2f})" if len(r.ratios) > 1 else ""
        out.append(
            f"| {r.label} | {r.batch} | {r.train_batch} | {r.events:,} | {_fmt(c['rate'])} | {_fmt(pt)} | {ratio:.2f}×{spread} | "
            f"{c['trained']:,} / {r.events:,}{_skipped(c)} | {'yes' if ratio >= 0.8 and every_label_stepped(c, r.events) else 'no'} |"
        )
    repeats = max((len(r.p99_gaps) for r in rows), default=0)
    per_run = f"; medians of {repeats} alternating runs each, and the range of the paired p99 gaps" if repeats > 1 else ""
    out += ["", f"### Latency at half the catch-up rate (ms, event produced → prediction received; MAX_BATCH_DELAY_MS = {delay:g}{per_run})", ""]
    out += [
        "| model | MAX_BATCH_SIZE | TRAIN_BATCH_SIZE | rate (ev/s) | service p50 | p99 | max | pass-through p50 | p99 | max | p99 above pass-through | target ≤ "
        + f"{delay + 20:g} ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        s, p = r.latency, r.passthrough_latency
        if not s:
            continue
        gap = p99_gap(r.p99_gaps, s, p)
        spread = f" ({min(r.p99_gaps):.1f} to {max(r.p99_gaps):.1f})" if len(r.p99_gaps) > 1 else ""
        lost = "" if s["received"] >= s["produced"] else f" ({s['produced'] - s['received']} not received)"
        out.append(
            f"| {r.label} | {r.batch} | {r.train_batch} | {_fmt(s['rate'])} | {_fmt(s['p50'], 1)} | {_fmt(s['p99'], 1)} | {_fmt(s['max'], 1)} | "
            f"{_fmt(p['p50'], 1)} | {_fmt(p['p99'], 1)} | {_fmt(p['max'], 1)} | {_fmt(gap, 1)}{spread}{lost} | {'yes' if gap <= delay + 20 else 'no'} |"
        )
    out += _phases_table(rows)
    out += _cpu_table(rows)
    out += ["", "### Training", ""]
    out += [
        "| model | MAX_BATCH_SIZE | TRAIN_BATCH_SIZE | examples/s in catch-up | label → step lag p50 (ms, paced) | p99 | max | prequential accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lag = r.latency.get("train_lag", {})
        acc = r.catch_up.get("accuracy")
        out.append(
            f"| {r.label} | {r.batch} | {r.train_batch} | {_fmt(r.catch_up['train_rate'])} | {_fmt(lag.get('p50'), 1)} | {_fmt(lag.get('p99'), 1)} | "
            f"{_fmt(lag.get('max'), 1)} | {'-' if acc is None else f'{acc:.1%}'} |"
        )
    out += [""] + [f"Trainer alone (`learn_many`, steps of {settings.train_batch_size}, CPU): {m} {_fmt(v)} examples/s" + "  " for m, v in alone.items()]
    out += ["", "### Memory per pending join entry (dim 32, 2 classes, ids like `e-123456`, tracemalloc)", ""]
    out += ["| pending events | bytes / entry | target ≤ 4 × 32 + 64 = 192 |", "|---:|---:|:-:|"]
    for n, b in memory.items():
        out.append(f"| {n:,} | {b:.1f} | {'yes' if b <= 4 * INPUT_DIM + 64 else 'no'} |")
    if SHUTDOWN_ERRORS:
        out += ["", f"Note: the service failed while shutting down (after its figures were taken) {len(SHUTDOWN_ERRORS)} time(s): {SHUTDOWN_ERRORS[0]}"]
    return "\n".join(out)


async def measure(row: Row, mode: Mode, skip_latency: bool, tmp: Path, log: Any) -> None:
    """One row, side by side on a broker of its own: pass-through and service runs in turn, then latency.

    A fresh broker per row because Tansu keeps every record in memory: over a long run it slowed
    as it filled (the pass-through fell from 24.5k to 15.5k events/s between the first and the
    last row of one run), which made rows far apart incomparable.
    """
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        events, labels = _name("events"), _name("labels")
        await ensure_topics(bootstrap, {DLQ: 1, events: PARTITIONS, labels: PARTITIONS})
        stream = make_stream(row.events)
        await prefill(bootstrap, stream, events, labels)
        name = f"{row.label} batch {row.batch} train batch {row.train_batch}"
        log(f"{name}: pre-filled {row.events:,} events ({stream.mean_event_bytes():.0f} bytes each) and their labels on {bootstrap}")
        await measure_catch_up(row, mode, bootstrap, (events, labels), tmp, lambda message: log(f"{name}: {message}"))
        if not skip_latency:
            rate = 0.5 * row.catch_up["rate"]
            for repeat in range(mode.latency_repeats):
                # Alternate which goes first, so a drift in the machine's load favours neither.
                service_first = repeat % 2 == 0
                for measured in ("service", "pass-through") if service_first else ("pass-through", "service"):
                    if measured == "service":
                        row.latency_runs.append(
                            await service_latency(bootstrap, row.model, row.batch, rate, mode, tmp, row.train_batch, broker.pid)
                        )
                    else:
                        row.passthrough_latency_runs.append(await passthrough_latency(bootstrap, rate, mode, tmp, broker.pid))
                row.p99_gaps.append(row.latency_runs[-1]["p99"] - row.passthrough_latency_runs[-1]["p99"])
                log(
                    f"{name}: latency at {rate:,.0f}/s: p99 {row.latency_runs[-1]['p99']:.1f} ms vs pass-through "
                    f"{row.passthrough_latency_runs[-1]['p99']:.1f} ms"
                )
            row.latency = combine_runs(row.latency_runs)
            row.passthrough_latency = combine_runs(row.passthrough_latency_runs)


async def measure_catch_up(row: Row, mode: Mode, bootstrap: str, topics: tuple[str, str], tmp: Path, log: Any) -> None:
    """The pass-through, then ``mode.catch_up_repeats`` times the service and the pass-through again,
    over the same pre-filled ``topics`` (events, labels); each service run's ratio is to the
    pass-through runs on either side of it."""
    events, labels = topics

    async def pass_through() -> None:
        row.passthrough.append((await passthrough_catch_up(bootstrap, events, row.events, tmp))["rate"])
        log(f"pass-through catch-up {row.passthrough[-1]:,.0f} events/s")

    await pass_through()
    for _ in range(mode.catch_up_repeats):
        run = await service_catch_up(
            bootstrap, events, labels, row.events, row.model, row.batch, tmp, row.train_batch, row.kernels
        )
        row.catch_up_runs.append(run)
        log(f"service catch-up {run['rate']:,.0f} events/s, trained {run['trained']:,}")
        await pass_through()
        row.ratios.append(run["rate"] / float(np.mean(row.passthrough[-2:])))
    row.catch_up = combine_catch_ups(row.catch_up_runs)


def combine_catch_ups(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Catch-up runs as one: the median of each figure, and the fewest labels trained (each run must train them all)."""
    numbers = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    combined: dict[str, Any] = {k: float(np.median([r[k] for r in runs])) for k in numbers}
    combined.update(trained=min(r["trained"] for r in runs), skipped=max(r["skipped"] for r in runs), runs=len(runs))
    accuracies = [r["accuracy"] for r in runs if r.get("accuracy") is not None]
    combined["accuracy"] = float(np.median(accuracies)) if accuracies else None
    return combined


def combine_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Paced runs as one: medians of rates, percentiles and cores, the largest max, summed counts."""
    if not runs:
        return {}

    def median(values: list[Any]) -> float | None:
        known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.median(known)) if known else None

    combined: dict[str, Any] = {"runs": len(runs)}
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if key == "max":
            combined[key] = max(values)
        elif key in ("produced", "received", "measured", "trained"):
            combined[key] = sum(values)
        elif isinstance(value, dict):
            combined[key] = {k: median([v.get(k) for v in values]) for k in value}
        elif isinstance(value, (int, float)):
            combined[key] = median(values)
    return combined


async def run(mode: Mode, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    settings = Settings(_env_file=None, input_dim=INPUT_DIM)  # type: ignore[call-arg]
    rows = [
        Row(m, b, mode.events_batch1 if b == 1 else mode.events, t, k)
        for m in mode.models
        for b in mode.batch_sizes
        for t in sorted({b if t == "same" else int(t) for t in mode.train_batch_sizes}, reverse=True)
        for k in args.kernels.split(",")
    ]
    log = _progress(args.quiet)
    with tempfile.TemporaryDirectory(prefix="stream-learner-bench-") as tmpdir:
        for row in rows:
            await measure(row, mode, args.skip_latency, Path(tmpdir), log)
    alone = {m: trainer_alone(m, mode.trainer_seconds) for m in mode.models}
    memory = {mode.memory_entries: bytes_per_pending_entry(mode.memory_entries)}
    table = render(rows, memory, alone, settings)
    raw = {
        "machine": machine(),
        "mode": vars(mode),
        "rows": [vars(r) for r in rows],
        "trainer_alone": alone,
        "memory": {str(k): v for k, v in memory.items()},
    }
    return table, raw


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, CPU only" + (
        "" if not torch.cuda.is_available() else f", CUDA: {torch.cuda.get_device_name()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode", help="smaller run (about 8 minutes)")
    parser.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help="tiny run for the test suite")
    parser.add_argument("--models", help="comma-separated, e.g. linear,mlp")
    parser.add_argument("--batch-sizes", help="comma-separated MAX_BATCH_SIZE values, e.g. 1,32,256,1024")
    parser.add_argument("--events", type=int, help="events pre-filled for batch sizes > 1")
    parser.add_argument(
        "--train-batch-sizes", help="comma-separated TRAIN_BATCH_SIZE values; 'same' = MAX_BATCH_SIZE (default: same,32)"
    )
    parser.add_argument(
        "--kernels", default="auto",
        help="comma-separated rows per configuration: auto, off (CPU_KERNELS), or record_batch-off / id_table-off (one fast path off)",
    )
    parser.add_argument("--skip-latency", action="store_true", help="catch-up, training and memory only")
    parser.add_argument("--latency-repeats", type=int, help="paced runs of each side per row (full: 3, quick: 2)")
    parser.add_argument("--catch-up-repeats", type=int, help="catch-up runs of the service per row, each between pass-through runs (full: 2, quick: 1)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    mode = MODES[args.mode or "full"]
    overrides: dict[str, Any] = {}
    if args.models:
        overrides["models"] = tuple(args.models.split(","))
    if args.batch_sizes:
        overrides["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if args.events:
        overrides["events"] = args.events
    if args.train_batch_sizes:
        overrides["train_batch_sizes"] = tuple(args.train_batch_sizes.split(","))
    if args.latency_repeats:
        overrides["latency_repeats"] = args.latency_repeats
    if args.catch_up_repeats:
        overrides["catch_up_repeats"] = args.catch_up_repeats
    mode = Mode(**{**vars(mode), **overrides})
    _quiet_logs()
    started = time.monotonic()
    table, raw = asyncio.run(run(mode, args))
    report(table, raw, f"Machine: {raw['machine']}. Mode: {args.mode or 'full'}; {time.monotonic() - started:.0f} s.", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
