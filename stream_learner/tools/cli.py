"""The ``stream-learner`` command: ``run``, ``demo``, ``produce``, ``export`` and ``checkpoint show``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from pydantic import ValidationError

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.errors import StreamLearnerError
from stream_learner.observability.logs import configure_logging
from stream_learner.settings_loading import load_settings, named_env_file

if TYPE_CHECKING:
    from stream_learner.observability.prometheus import PrometheusTelemetry
    from stream_learner.predictor import Predictor
    from stream_learner.service import Service

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stream-learner`` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("--help", [])
    handlers = {"run": _run, "demo": _demo, "produce": _produce, "export": _export, "checkpoint": _checkpoint}
    if command not in handlers:
        print(
            "usage: stream-learner {run,demo,produce,export,checkpoint} [options]   (each takes --help)",
            file=sys.stderr,
        )
        return 0 if command in ("-h", "--help") else EXIT_CONFIG
    try:
        return handlers[command](rest)
    except ValidationError as exc:
        print(f"stream-learner: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StreamLearnerError as exc:
        print(f"stream-learner: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CONFIG if not exc.retriable else 1


def _run(args: list[str]) -> int:
    settings = load_settings(args, prog="stream-learner run")
    configure_logging(settings.log_level)
    from stream_learner.observability.prometheus import PrometheusTelemetry
    from stream_learner.predictor import Predictor
    from stream_learner.service import Service
    from stream_learner.tools.process import freeze_startup_heap

    telemetry = PrometheusTelemetry(settings)
    service: Service | Predictor
    if settings.role == "predictor":
        service = Predictor(settings, telemetry=telemetry)
    else:
        service = Service(settings, telemetry=telemetry)
    telemetry.attach(service.status)
    freeze_startup_heap()
    return asyncio.run(_serve(service, telemetry))


async def _serve(service: Service | Predictor, telemetry: PrometheusTelemetry | None = None) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    server = None
    if telemetry is not None and service.settings.metrics_port:
        # Before the service connects: /healthz answers at once, /readyz says 503 until the service is ready.
        from stream_learner.observability.metrics_server import MetricsServer

        settings = service.settings
        server = await MetricsServer(
            telemetry.registry, service.status.health, settings.metrics_host, settings.metrics_port
        ).start()
    try:
        await service.run()
    finally:
        if server is not None:
            await server.close()
    return 0


def _demo(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stream-learner demo", description="Embedded broker, drifting stream, live model."
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (default 60)")
    parser.add_argument("--rate", type=float, default=400.0, help="events per second (default 400)")
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds from an event to its label (default 2)")
    parser.add_argument("--input-dim", type=int, default=8, help="features per event (default 8)")
    parser.add_argument("--model", default="linear", help="linear or mlp (default linear)")
    parser.add_argument("--report-every", type=float, default=3.0, help="seconds between progress lines (default 3)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="keep checkpoints here (default: a temp dir)")
    options = parser.parse_args(args)
    configure_logging("warning")
    from stream_learner.tools.demo import run_demo

    return asyncio.run(run_demo(options))


def _produce(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stream-learner produce",
        description="Send the demo's synthetic drifting stream to a running Kafka: events now, their labels later.",
        epilog="Brokers, topics, INPUT_DIM and SASL/SSL settings not given as flags come from the "
        "STREAM_LEARNER_* environment, as for `stream-learner run`.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--bootstrap-servers", default=None, help="default: STREAM_LEARNER_BOOTSTRAP_SERVERS or localhost:9092"
    )
    parser.add_argument("--events-topic", default=None, help="default: STREAM_LEARNER_EVENTS_TOPIC or events")
    parser.add_argument("--labels-topic", default=None, help="default: STREAM_LEARNER_LABELS_TOPIC or labels")
    parser.add_argument(
        "--input-dim", type=int, default=None, help="features per event (default: STREAM_LEARNER_INPUT_DIM)"
    )
    parser.add_argument("--rate", type=float, default=400.0, help="events per second (default 400)")
    parser.add_argument("--label-delay", type=float, default=2.0, help="seconds from an event to its label (default 2)")
    parser.add_argument(
        "--drift-after", type=float, default=120.0, help="seconds until the concept drifts; 0: never (default 120)"
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run; 0: until SIGTERM/SIGINT (default 0)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the stream (default 7)")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines (default 10)")
    options = parser.parse_args(args)
    if options.rate <= 0 or options.label_delay < 0 or options.report_every <= 0:
        parser.error("--rate and --report-every must be positive, --label-delay not negative")
    configure_logging("warning")
    names = ("bootstrap_servers", "events_topic", "labels_topic", "input_dim")
    settings = load_settings(**{n: getattr(options, n) for n in names if getattr(options, n) is not None})
    from stream_learner.tools.demo import run_producer

    return asyncio.run(run_producer(options, settings))


def _export(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stream-learner export",
        description="Export the latest checkpoint's model (standardizer included) as TorchScript or ONNX: "
        "float32 features [batch, INPUT_DIM] in, the scores the service publishes out.",
        epilog="Every other flag is a setting, as for `stream-learner run` (see its --help): the model settings "
        "(INPUT_DIM, TASK, NUM_CLASSES, MODEL, HIDDEN_DIM) must be those the service ran with, and "
        "CHECKPOINT_DIR says where the checkpoints are.",
        allow_abbrev=False,
    )
    parser.add_argument("--format", choices=("torchscript", "onnx"), required=True, help="file format")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--json", action="store_true", help="print what was exported as JSON")
    options, rest = parser.parse_known_args(args)
    settings = load_settings(rest, prog="stream-learner export")
    configure_logging("warning")
    from stream_learner.tools.export import export_model

    info = export_model(settings, options.format, options.out)
    if options.json:
        sys.stdout.write(orjson.dumps(asdict(info), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        checked = "checked against the live model" if info.verified else "not checked (onnxruntime is not installed)"
        print(
            f"exported model version {info.model_version} (checkpoint {info.checkpoint_id}) to {info.path} "
            f"as {info.format}: {info.input_name} [batch, {info.input_dim}] -> {info.output_name} "
            f"[batch, {info.output_dim}]; {checked}"
        )
    return 0


def _checkpoint(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stream-learner checkpoint", description="Inspect checkpoints.")
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="the latest checkpoint in CHECKPOINT_DIR")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument(
        "--checkpoint-dir", type=Path, default=None,
        help="default: STREAM_LEARNER_CHECKPOINT_DIR (environment, then STREAM_LEARNER_ENV_FILE) or ./checkpoints",
    )  # fmt: skip
    options = parser.parse_args(args)
    configure_logging("warning")
    directory = options.checkpoint_dir or _checkpoint_dir_from_env(Settings.model_fields["checkpoint_dir"].default)
    from stream_learner.tools.describe import describe_latest

    summary = describe_latest(CheckpointStore(directory, keep=1))
    if summary is None:
        print(f"stream-learner: no checkpoint in {directory}", file=sys.stderr)
        return 1
    if options.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


def _checkpoint_dir_from_env(default: Path) -> Path:
    # Settings needs INPUT_DIM, which an inspection must not require; read just this one setting,
    # from the same sources (the environment, then the env file STREAM_LEARNER_ENV_FILE names).
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class _Dir(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="STREAM_LEARNER_", env_file=None, extra="ignore")
        checkpoint_dir: Path = default

    return _Dir(_env_file=named_env_file()).checkpoint_dir
