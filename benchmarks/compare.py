"""Two runs of ``benchmarks.run --json`` side by side, as markdown tables (before → after).

    .venv/bin/python -m benchmarks.compare before.json after.json [--labels "4c2fe98,HEAD"]

Rows are matched by model and MAX_BATCH_SIZE; each ratio is taken against the pass-through
of its own run (the pass-through is re-measured in every run, so the ratios compare across
runs better than the absolute rates do).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .common import catch_up_ratio, every_label_stepped, p99_gap


def _load(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _rows(run: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["model"], r["batch"], r.get("train_batch", 32)): r for r in run["rows"]}


def _passthrough(run: dict[str, Any], row: dict[str, Any]) -> float:
    """The row's own pass-through (one broker per row), or the run's for its event count (older runs)."""
    return float(np.mean(row.get("passthrough") or run["passthrough"][str(row["events"])]))


def render(before: dict[str, Any], after: dict[str, Any], labels: tuple[str, str], delay_ms: float = 10.0) -> str:
    b_rows, a_rows = _rows(before), _rows(after)
    keys = [k for k in a_rows if k in b_rows]
    bl, al = labels
    out = [f"#### Catch-up throughput (events/s; ratio to the pass-through of the same run): {bl} → {al}", ""]
    out += [
        "| model | MAX_BATCH_SIZE / TRAIN_BATCH_SIZE | events | service | pass-through | ratio | labels trained (after) | target ≥ 0.8× |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for key in keys:
        b, a = b_rows[key], a_rows[key]
        pb, pa = _passthrough(before, b), _passthrough(after, a)
        rb, ra = (catch_up_ratio(r.get("ratios") or [], r["catch_up"]["rate"], [p]) for r, p in ((b, pb), (a, pa)))
        ok = ra >= 0.8 and every_label_stepped(a["catch_up"], a["events"])
        out.append(
            f"| {key[0]} | {key[1]}/{key[2]} | {a['events']:,} | {_fmt(b['catch_up']['rate'])} → **{_fmt(a['catch_up']['rate'])}** | "
            f"{_fmt(pb)} → {_fmt(pa)} | {rb:.2f}× → **{ra:.2f}×** | {a['catch_up']['trained']:,} / {a['events']:,} | {'yes' if ok else 'no'} |"
        )
    out += ["", f"#### Latency at half the catch-up rate (ms; p99 above the pass-through's p99 of the same run; target ≤ {delay_ms + 20:g} ms): {bl} → {al}", ""]
    out += [
        "| model | MAX_BATCH_SIZE / TRAIN_BATCH_SIZE | rate (ev/s) | service p50 | service p99 | pass-through p99 | p99 above pass-through | target |",
        "|---|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for key in keys:
        b, a = b_rows[key], a_rows[key]
        if not (b.get("latency") and a.get("latency")):
            continue
        bs, as_, bp, ap = b["latency"], a["latency"], b["passthrough_latency"], a["passthrough_latency"]
        gb, ga = (p99_gap(r.get("p99_gaps") or [], r["latency"], r["passthrough_latency"]) for r in (b, a))
        out.append(
            f"| {key[0]} | {key[1]}/{key[2]} | {_fmt(bs['rate'])} → {_fmt(as_['rate'])} | {_fmt(bs['p50'], 1)} → {_fmt(as_['p50'], 1)} | "
            f"{_fmt(bs['p99'], 1)} → {_fmt(as_['p99'], 1)} | {_fmt(bp['p99'], 1)} → {_fmt(ap['p99'], 1)} | "
            f"{_fmt(gb, 1)} → **{_fmt(ga, 1)}** | {'yes' if ga <= delay_ms + 20 else 'no'} |"
        )
    out += ["", f"#### Training: {bl} → {al}", ""]
    out += [
        "| model | MAX_BATCH_SIZE / TRAIN_BATCH_SIZE | examples/s in catch-up | label → step lag p50 (ms, paced) | p99 | prequential accuracy (catch-up) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in keys:
        b, a = b_rows[key], a_rows[key]
        lb, la = b.get("latency", {}).get("train_lag", {}), a.get("latency", {}).get("train_lag", {})
        acc = [r["catch_up"].get("accuracy") for r in (b, a)]
        out.append(
            f"| {key[0]} | {key[1]}/{key[2]} | {_fmt(b['catch_up']['train_rate'])} → {_fmt(a['catch_up']['train_rate'])} | "
            f"{_fmt(lb.get('p50'), 1)} → {_fmt(la.get('p50'), 1)} | {_fmt(lb.get('p99'), 1)} → {_fmt(la.get('p99'), 1)} | "
            + " → ".join("-" if x is None else f"{x:.1%}" for x in acc)
            + " |"
        )
    out += [""]
    for model in after.get("trainer_alone", {}):
        out.append(
            f"Trainer alone (`learn_many`, steps of 32, CPU), {model}: {_fmt(before.get('trainer_alone', {}).get(model))} → "
            f"{_fmt(after['trainer_alone'][model])} examples/s  "
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--labels", default="before,after", help="two names for the column headers, comma-separated")
    args = parser.parse_args(argv)
    labels = tuple(args.labels.split(",", 1))
    print(render(_load(args.before), _load(args.after), (labels[0], labels[1])))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
