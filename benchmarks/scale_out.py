"""What the roles buy (``ROLE=predictor`` and ``ROLE=trainer``, docs/deployment.md), each part measured
side by side with its reference within one run, on an embedded broker of its own (Tansu, in memory):

1. **Predictor alone vs the pass-through**: N pre-filled events (dim 32, 4 partitions) and one model
   version on a 1-partition models topic; ``Predictor`` in-process, timed from its first to its last
   prediction (Kafka timestamps of the predictions topic), beside the bare pass-through
   (``benchmarks.passthrough``) over the same events before and after each predictor run. Target >= 0.9x.
2. **Trainer alone vs the all-in-one catch-up**: N pre-filled events and a label for every one;
   ``Service`` with ``ROLE=trainer`` beside ``Service`` with ``ROLE=all`` (each run in its own group,
   with its own predictions and models topics and checkpoint directory), both timed the same way: from
   the first events read to the later of the end of the last optimizer step and the last prediction's
   timestamp (the trainer publishes none), every label stepped; events + labels per second. Target >= 2x.
3. **1 vs 2 predictor processes** (``python -m stream_learner run``, ``ROLE=predictor``): started on
   fresh, empty topics with a model version waiting; once the group's assignment is settled they are
   paused (SIGSTOP) while N events are pre-filled, then resumed (SIGCONT), so neither the rebalance nor
   the pre-filling is in the window: events/s from the first to the last prediction's timestamp, every
   id predicted. On a machine of few cores the predictor processes share them with the broker.
4. **Model staleness at steady state**: a trainer and a predictor process, a paced producer
   (``benchmarks.loadgen``, in a child process: events at ``--rate``, each label ``--label-lag`` events
   later); per prediction, age = its record's timestamp - ``created_at`` of the version (generation,
   ``model_version``) that served it, read from the models topic's headers; p50, p99 and max over the
   last 3/4 of the run, against the documented bound ``MODEL_PUBLISH_INTERVAL_S`` + 2 s.

Parts 1 to 3 run the measured side ``--repeats`` times, each run between two runs of its reference
(the pass-through; ROLE=all; one predictor process); the ratio is the median of each run's ratio to
the mean of the reference runs on either side (``common.catch_up_ratio``). Every child process this
starts is stopped (SIGTERM, then SIGKILL) before its part ends, whatever happens.

    .venv/bin/python -m benchmarks.scale_out                                              # full
    .venv/bin/python -m benchmarks.scale_out --events 5000 --repeats 1 --models linear    # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream_learner.checkpointing.cut import model_spec
from stream_learner.config import Settings
from stream_learner.learning.model import build_model
from stream_learner.model_versions.record import MAX_CHUNK_BYTES, BadVersionError, encode_version, read_info
from stream_learner.predictor import Predictor
from stream_learner.service import Service
from stream_learner.tools.broker import EmbeddedBroker, ensure_topics
from stream_learner.tools.process import freeze_startup_heap

from .common import (
    DLQ,
    INPUT_DIM,
    PARTITIONS,
    SHUTDOWN_ERRORS,
    Stream,
    bench_settings,
    catch_up_ratio,
    fmt,
    labels_used,
    make_stream,
    output_window,
    percentiles,
    prefill,
    progress_log,
    quiet_logs,
    stop_service,
    unique_name,
)
from .probe import TrainingProbe
from .run import machine, passthrough_catch_up

ROOT = Path(__file__).resolve().parent.parent
BATCH = int(Settings.model_fields["max_batch_size"].default)
TRAIN_BATCH = int(Settings.model_fields["train_batch_size"].default)
PUBLISH_INTERVAL_S = float(Settings.model_fields["model_publish_interval_s"].default)
STALENESS_MARGIN_S = 2.0
"""The documented bound on a served model's age is MODEL_PUBLISH_INTERVAL_S + this."""
Log = Callable[[str], None]
Run = dict[str, Any]


# --- shared pieces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    events: str
    labels: str
    predictions: str
    models: str


async def fresh_topics(bootstrap: str) -> Topics:
    """New events, labels and predictions topics (4 partitions) and a models topic (one partition)."""
    topics = Topics(unique_name("events"), unique_name("labels"), unique_name("predictions"), unique_name("models"))
    layout = {topics.events: PARTITIONS, topics.labels: PARTITIONS, topics.predictions: PARTITIONS, topics.models: 1}
    await ensure_topics(bootstrap, {DLQ: 1, **layout})
    return topics


async def publish_model(bootstrap: str, topic: str, model: str) -> None:
    """One model version (fresh weights, generation 1, step 1) on partition 0 of ``topic``."""
    settings = Settings(_env_file=None, input_dim=INPUT_DIM, model=model)
    weights = build_model(settings).state_dict()
    records = encode_version(weights, 1, 1, trained_through={}, spec=model_spec(settings), durable=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()


async def read_to_end(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end offsets as they are now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=4 * MAX_CHUNK_BYTES
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for batch in (await consumer.getmany(timeout_ms=200, max_records=100_000)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


async def wait_until(done: Callable[[], bool], what: str, timeout_s: float, check: Callable[[], None]) -> None:
    """Poll ``done`` until it holds; ``check`` raises when what is waited on failed."""
    deadline = time.monotonic() + timeout_s
    while not done():
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def still_running(task: asyncio.Task[None]) -> Callable[[], None]:
    def check() -> None:
        if task.done():
            task.result()
            raise RuntimeError("the service stopped by itself")

    return check


def catch_up_timeout(n: int) -> float:
    return max(120.0, n / 200)


async def sandwich(measured: Callable[[], Awaitable[Run]], reference: Callable[[], Awaitable[Run]], repeats: int) -> Run:
    """The reference, then ``repeats`` times the measured run and the reference again; each measured run's
    ratio is to the mean of the reference runs just before and after it (as run.py's catch-up)."""
    references, runs, ratios = [await reference()], [], []
    for _ in range(repeats):
        runs.append(await measured())
        references.append(await reference())
        ratios.append(runs[-1]["rate"] / float(np.mean([r["rate"] for r in references[-2:]])))
    rates, reference_rates = [r["rate"] for r in runs], [r["rate"] for r in references]
    return {
        "rate": float(np.median(rates)), "reference_rate": float(np.median(reference_rates)),
        "ratio": catch_up_ratio(ratios, rates[-1], reference_rates), "ratios": ratios, "runs": runs, "references": references,
    }  # fmt: skip


# --- child processes -------------------------------------------------------------------------------


class Child:
    """One ``python -m stream_learner run`` child: its settings in the environment, its JSON log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream_learner", "run"], env={**clean, **env}, cwd=ROOT, stdout=log, stderr=log)
        self.log_path = log_path

    def log_events(self, event: str) -> list[dict[str, Any]]:
        lines = self.log_path.read_bytes().splitlines()
        entries = (orjson.loads(line) for line in lines if line.startswith(b"{") and b'"event"' in line)
        return [e for e in entries if e.get("event") == event]

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"a stream-learner child exited ({self.proc.returncode}):\n{tail}")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self, grace_s: float = 5.0) -> None:
        """SIGTERM (after SIGCONT, in case it is paused), SIGKILL past ``grace_s``."""
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def child_env(bootstrap: str, topics: Topics, model: str, role: str, tmp: Path, group: str, **extra: object) -> dict[str, str]:
    settings = {
        "bootstrap_servers": bootstrap, "events_topic": topics.events, "labels_topic": topics.labels,
        "predictions_topic": topics.predictions, "models_topic": topics.models, "dead_letter_topic": DLQ,
        "group_id": group, "client_id": f"{group}.{role}", "role": role, "model": model, "input_dim": INPUT_DIM,
        "checkpoint_dir": tmp / f"checkpoints-{group}", "metrics_port": 0, "log_level": "info", "log_interval_s": 0.5,
        **extra,
    }  # fmt: skip
    return {f"STREAM_LEARNER_{k.upper()}": str(v) for k, v in settings.items()}


def check_all(children: list[Child]) -> Callable[[], None]:
    def check() -> None:
        for child in children:
            child.check()

    return check


def settled(children: list[Child], partitions: int) -> bool:
    """Every child's latest assignment is in, and together they hold each partition once."""
    latest = [child.log_events("partitions_assigned")[-1:] for child in children]
    if not all(latest):
        return False
    held = [p for entry in latest for p in entry[0]["partitions"]]
    return len(held) == len(set(held)) == partitions


def rebalances(children: list[Child]) -> list[int]:
    """Assignments and revocations each child logged so far."""
    return [len(c.log_events("partitions_assigned")) + len(c.log_events("partitions_revoked")) for c in children]


def predicted(children: list[Child]) -> int:
    """Events predicted by the children, by their latest progress lines."""
    return sum(entries[-1]["events_predicted"] for entries in (c.log_events("progress") for c in children) if entries)


def close_all(children: list[Child]) -> None:
    for child in children:
        child.close()


# --- 1. predictor alone vs the pass-through --------------------------------------------------------


async def predictor_catch_up(bootstrap: str, events: str, models: str, n: int, model: str, tmp: Path) -> Run:
    """``Predictor`` in-process over the pre-filled ``events``: its first to last prediction's timestamps."""
    outputs = unique_name("predictions")
    await ensure_topics(bootstrap, {outputs: PARTITIONS})
    checkpoints = tmp / uuid.uuid4().hex
    settings = bench_settings(
        bootstrap, events, unique_name("labels"), outputs, model, BATCH, checkpoints, TRAIN_BATCH, role="predictor", models_topic=models
    )
    predictor = Predictor(settings)
    freeze_startup_heap()  # as `stream-learner run` does
    task = asyncio.create_task(predictor.run())
    try:
        done = lambda: predictor.totals["events_predicted"] >= n  # noqa: E731
        await wait_until(done, f"{n} predictions", catch_up_timeout(n), still_running(task))
    finally:
        await stop_service(predictor, task)
    return await output_window(bootstrap, outputs, n)


async def part_predictor(model: str, stream: Stream, repeats: int, tmp: Path, log: Log) -> Run:
    with EmbeddedBroker() as broker:
        bootstrap, n = broker.bootstrap_servers, len(stream)
        events, models = unique_name("events"), unique_name("models")
        await ensure_topics(bootstrap, {DLQ: 1, events: PARTITIONS, models: 1})
        await prefill(bootstrap, stream, events, None)
        await publish_model(bootstrap, models, model)

        async def measured() -> Run:
            run = await predictor_catch_up(bootstrap, events, models, n, model, tmp)
            log(f"{model}: predictor {run['rate']:,.0f} events/s ({run['distinct_keys']:,} ids predicted)")
            return run

        async def reference() -> Run:
            run = await passthrough_catch_up(bootstrap, events, n, tmp)
            log(f"{model}: pass-through {run['rate']:,.0f} events/s")
            return run

        return await sandwich(measured, reference, repeats)


# --- 2. trainer alone vs the all-in-one service ----------------------------------------------------


class FirstRead:
    """When the service first handed events to its micro-batcher (epoch seconds)."""

    def __init__(self, service: Service) -> None:
        self.at = float("nan")
        add = service.batcher.add

        def probed_add(events: Any, now: float) -> Any:
            if math.isnan(self.at):
                self.at = time.time()
            return add(events, now)

        service.batcher.add = probed_add  # type: ignore[method-assign]


async def learner_catch_up(
    bootstrap: str, role: str, events: str, labels: str, n: int, model: str, tmp: Path, **extra: Any
) -> Run:
    """``Service`` (``role`` all or trainer) in-process over the pre-filled topics until every label is stepped;
    ``extra`` sets other settings."""
    outputs, models = unique_name("predictions"), unique_name("models")
    await ensure_topics(bootstrap, {outputs: PARTITIONS, models: 1})
    settings = bench_settings(bootstrap, events, labels, outputs, model, BATCH, tmp / uuid.uuid4().hex, TRAIN_BATCH, role=role, models_topic=models, **extra)
    service = Service(settings)
    probe, first = TrainingProbe(service), FirstRead(service)
    freeze_startup_heap()
    task = asyncio.create_task(service.run())
    done = lambda: labels_used(service) >= n and (role == "trainer" or service.totals["events_predicted"] >= n)  # noqa: E731
    try:
        await wait_until(done, f"{n} labels stepped ({role})", catch_up_timeout(n), still_running(task))
    finally:
        await stop_service(service, task)
        probe.close()
    last = probe.last_step_wall
    if role == "all":
        last = max(last, (await output_window(bootstrap, outputs, n))["last"])
    seconds = last - first.at
    counters = service.learner.trainer.counters
    return {"role": role, "seconds": seconds, "rate": 2 * n / seconds, "trained": counters.examples_trained, "skipped": counters.examples_skipped}


async def part_trainer(model: str, stream: Stream, repeats: int, tmp: Path, log: Log) -> Run:
    with EmbeddedBroker() as broker:
        bootstrap, n = broker.bootstrap_servers, len(stream)
        events, labels = unique_name("events"), unique_name("labels")
        await ensure_topics(bootstrap, {DLQ: 1, events: PARTITIONS, labels: PARTITIONS})
        await prefill(bootstrap, stream, events, labels)

        def runner(role: str) -> Callable[[], Awaitable[Run]]:
            async def run() -> Run:
                result = await learner_catch_up(bootstrap, role, events, labels, n, model, tmp)
                log(f"{model}: ROLE={role} {result['rate']:,.0f} events+labels/s, {result['trained']:,} trained")
                return result

            return run

        return await sandwich(runner("trainer"), runner("all"), repeats)


# --- 3. one vs two predictor processes -------------------------------------------------------------


async def predictor_processes(bootstrap: str, count: int, stream: Stream, model: str, tmp: Path) -> Run:
    """``count`` predictor processes over N events pre-filled while they were paused."""
    topics, group, n = await fresh_topics(bootstrap), unique_name("group"), len(stream)
    await publish_model(bootstrap, topics.models, model)
    env = child_env(bootstrap, topics, model, "predictor", tmp, group)
    children: list[Child] = []
    try:
        for i in range(count):
            children.append(Child(env, tmp / f"{group}-{i}.log"))
        await wait_until(lambda: settled(children, PARTITIONS), "a settled assignment", 120, check_all(children))
        assignments = rebalances(children)
        for child in children:
            child.pause()  # the pre-filling takes well under the session timeout: no rebalance
        await prefill(bootstrap, stream, topics.events, None)
        for child in children:
            child.resume()
        await wait_until(lambda: predicted(children) >= n, f"{n} predictions", catch_up_timeout(n), check_all(children))
        rebalanced = rebalances(children) != assignments
    finally:
        close_all(children)
    return {"processes": count, "rebalanced": rebalanced, **await output_window(bootstrap, topics.predictions, n)}


async def part_processes(model: str, stream: Stream, repeats: int, tmp: Path, log: Log) -> Run:
    with EmbeddedBroker() as broker:

        def runner(count: int) -> Callable[[], Awaitable[Run]]:
            async def run() -> Run:
                result = await predictor_processes(broker.bootstrap_servers, count, stream, model, tmp)
                log(f"{model}: {count} predictor process(es) {result['rate']:,.0f} events/s ({result['distinct_keys']:,} ids)")
                return result

            return run

        return await sandwich(runner(2), runner(1), repeats)


# --- 4. staleness at steady state ------------------------------------------------------------------


async def paced_load(bootstrap: str, topics: Topics, rate: float, duration_s: float, label_lag: int) -> Run:
    """``benchmarks.loadgen`` in a child process; its result (event produced -> prediction received)."""
    command = [
        sys.executable, "-m", "benchmarks.loadgen", "--bootstrap", bootstrap, "--events", topics.events,
        "--labels", topics.labels, "--outputs", topics.predictions, "--rate", f"{rate:g}", "--duration", f"{duration_s:g}",
        "--warmup", f"{duration_s / 4:g}", "--label-delay", f"{label_lag / rate:g}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed with exit code {proc.returncode}")
    result: Run = orjson.loads(out.strip().splitlines()[-1])
    return result


def version_times(records: list[ConsumerRecord[bytes, bytes]]) -> dict[tuple[int, int], float]:
    """``created_at`` of each version on the models topic, by (generation, step); the earliest if repeated."""
    created: dict[tuple[int, int], float] = {}
    for record in records:
        try:
            info = read_info(record.headers)
        except BadVersionError:
            continue
        if info.chunk == 0:
            created[info.order] = min(created.get(info.order, info.created_at), info.created_at)
    return created


def model_ages(predictions: list[ConsumerRecord[bytes, bytes]], created: dict[tuple[int, int], float]) -> Run:
    """Each prediction's age of model (its timestamp - its version's created_at), over the last 3/4 of the run."""
    served = [orjson.loads(r.value) for r in predictions]
    stamps = np.array([r.timestamp / 1000 for r in predictions])
    born = np.array([created.get((v.get("model_generation", -1), v["model_version"]), np.nan) for v in served])
    steady = stamps >= stamps.min() + (stamps.max() - stamps.min()) / 4 if stamps.size else stamps.astype(bool)
    ages = (stamps - born)[steady & ~np.isnan(born)]
    return {"predictions": len(served), "measured": int(ages.size), "unknown_version": int(np.isnan(born).sum()), **percentiles(ages)}


async def part_staleness(model: str, args: argparse.Namespace, tmp: Path, log: Log) -> Run:
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topics, group = await fresh_topics(bootstrap), unique_name("group")
        interval = {"model_publish_interval_s": args.publish_interval}
        children: list[Child] = []
        try:
            children.append(Child(child_env(bootstrap, topics, model, "trainer", tmp, group, **interval), tmp / f"{group}-trainer.log"))
            children.append(Child(child_env(bootstrap, topics, model, "predictor", tmp, group, **interval), tmp / f"{group}-predictor.log"))
            ready = lambda: all(c.log_events("partitions_assigned") for c in children)  # noqa: E731
            await wait_until(ready, "the trainer and the predictor to read", 120, check_all(children))
            load = await paced_load(bootstrap, topics, args.rate, args.duration, args.label_lag)
            check_all(children)()
        finally:
            close_all(children)
        created = version_times(await read_to_end(bootstrap, topics.models))
        ages = model_ages(await read_to_end(bootstrap, topics.predictions), created)
    log(f"{model}: model age p99 {fmt(ages['p99'])} ms over {ages['measured']:,} predictions, {len(created)} versions")
    return {"publish_interval_s": args.publish_interval, "versions": len(created), "load": load, **ages}


# --- report ----------------------------------------------------------------------------------------


def spread(result: Run) -> str:
    ratios = result["ratios"]
    return f"**{result['ratio']:.2f}×**" + (f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else "")


def met(value: float, target: float) -> str:
    return "yes" if value >= target else "no"


def render_predictor(results: dict[str, Run], n: int) -> list[str]:
    out = [f"### 1. Predictor alone vs the pass-through ({n:,} pre-filled events, {PARTITIONS} partitions)", ""]
    out += ["| model | predictor, events/s | pass-through, events/s | ratio, median (range) | ids predicted | target ≥ 0.9× |"]
    out += ["|---|---:|---:|---:|---:|:-:|"]
    for model, r in results.items():
        ids = min(run["distinct_keys"] for run in r["runs"])
        out.append(f"| {model} | {fmt(r['rate'])} | {fmt(r['reference_rate'])} | {spread(r)} | {ids:,} / {n:,} | {met(r['ratio'], 0.9)} |")
    return out


def render_trainer(results: dict[str, Run], n: int) -> list[str]:
    out = [f"### 2. Trainer alone vs the all-in-one service ({n:,} events and {n:,} labels, pre-filled)", ""]
    out += [
        "| model | ROLE=trainer, events+labels/s | ROLE=all, events+labels/s | ratio trainer/all, median (range) "
        "| labels stepped, fewest | target ≥ 2× |"
    ]
    out += ["|---|---:|---:|---:|---:|:-:|"]
    for model, r in results.items():
        stepped = min(run["trained"] + run["skipped"] for run in r["runs"] + r["references"])
        out.append(f"| {model} | {fmt(r['rate'])} | {fmt(r['reference_rate'])} | {spread(r)} | {stepped:,} / {n:,} | {met(r['ratio'], 2.0)} |")
    return out


def render_processes(results: dict[str, Run], n: int) -> list[str]:
    out = [f"### 3. Predictor processes: 1 vs 2 ({n:,} events, {PARTITIONS} partitions)", ""]
    out += ["| model | 1 predictor, events/s | 2 predictors, events/s | ratio 2/1, median (range) | ids predicted, fewest |"]
    out += ["|---|---:|---:|---:|---:|"]
    for model, r in results.items():
        ids = min(run["distinct_keys"] for run in r["runs"] + r["references"])
        rebalanced = sum(run["rebalanced"] for run in r["runs"] + r["references"])
        note = f" ({rebalanced} run(s) rebalanced while measured)" if rebalanced else ""
        out.append(f"| {model} | {fmt(r['reference_rate'])} | {fmt(r['rate'])} | {spread(r)} | {ids:,} / {n:,}{note} |")
    cores = os.cpu_count()
    out += ["", f"Caveat: this machine has {cores} cores; the predictor processes share them with the broker (and "
            "with each other), so the 2/1 ratio is a floor for hosts where each predictor has its own cores."]  # fmt: skip
    return out


def render_staleness(results: dict[str, Run], args: argparse.Namespace) -> list[str]:
    load = f"{args.rate:,.0f} events/s for {args.duration:g} s, labels {args.label_lag} events later"
    out = [f"### 4. Model staleness at steady state (a trainer and a predictor process, {load}; the last 3/4 of the run)", ""]
    out += [
        "| model | MODEL_PUBLISH_INTERVAL_S | versions | predictions measured | model age p50 (ms) | p99 | max | bound (ms) "
        "| max within | event → prediction p50 / p99 (ms) |"
    ]
    out += ["|---|---:|---:|---:|---:|---:|---:|---:|:-:|---:|"]
    for model, r in results.items():
        bound = (r["publish_interval_s"] + STALENESS_MARGIN_S) * 1000
        load = r["load"]
        unknown = f" ({r['unknown_version']:,} by an unknown version)" if r["unknown_version"] else ""
        out.append(
            f"| {model} | {r['publish_interval_s']:g} | {r['versions']:,} | {r['measured']:,}{unknown} | {fmt(r['p50'])} | {fmt(r['p99'])} | "
            f"{fmt(r['max'])} | {fmt(bound)} | {'yes' if r['max'] <= bound else 'no'} | {fmt(load['p50'], 1)} / {fmt(load['p99'], 1)} |"
        )
    return out


def render(raw: Run, args: argparse.Namespace) -> str:
    parts, n = raw["parts"], args.events
    out = render_predictor(parts["predictor"], n) + [""] + render_trainer(parts["trainer"], n)
    if not args.skip_processes:
        out += [""] + render_processes(parts["processes"], n) + [""] + render_staleness(parts["staleness"], args)
    if SHUTDOWN_ERRORS:
        failed = f"{len(SHUTDOWN_ERRORS)} time(s): {SHUTDOWN_ERRORS[0]}"
        out += ["", f"Note: an in-process run failed while shutting down (after its figures were taken) {failed}"]
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> tuple[str, Run]:
    log = progress_log(args.quiet)
    stream = make_stream(args.events)
    parts: dict[str, dict[str, Run]] = {"predictor": {}, "trainer": {}, "processes": {}, "staleness": {}}
    with tempfile.TemporaryDirectory(prefix="stream-learner-scale-out-") as tmpdir:
        tmp = Path(tmpdir)
        for model in args.models.split(","):
            parts["predictor"][model] = await part_predictor(model, stream, args.repeats, tmp, log)
            parts["trainer"][model] = await part_trainer(model, stream, args.repeats, tmp, log)
            if not args.skip_processes:
                parts["processes"][model] = await part_processes(model, stream, args.repeats, tmp, log)
                parts["staleness"][model] = await part_staleness(model, args, tmp, log)
    raw = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "json"}, "parts": parts}
    return render(raw, args), raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_out", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events pre-filled for parts 1 to 3 (default 100,000)")
    parser.add_argument("--models", default="linear,mlp", help="comma-separated, e.g. linear,mlp")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per part, each between two reference runs")
    parser.add_argument("--skip-processes", action="store_true", help="skip parts 3 and 4 (child processes)")
    parser.add_argument("--rate", type=float, default=1000.0, help="part 4: events per second")
    parser.add_argument("--duration", type=float, default=20.0, help="part 4: seconds of paced events")
    parser.add_argument("--label-lag", type=int, default=100, help="part 4: each label this many events after its event")
    parser.add_argument("--publish-interval", type=float, default=PUBLISH_INTERVAL_S, help="part 4: MODEL_PUBLISH_INTERVAL_S")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.events < 1:
        parser.error("--repeats and --events must be at least 1")
    quiet_logs()
    started = time.monotonic()
    table, raw = asyncio.run(run(args))
    heading = f"Machine: {raw['machine']}. {args.events:,} events, {args.repeats} repeat(s); {time.monotonic() - started:.0f} s."
    report(table, raw, heading, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
