"""The skeleton every method benchmark in ``benchmarks/`` (merging, pruning, gating, early exit) shares.

A method benchmark exports some rows (ONNX files of one model and its sped-up variants), times them
interleaved through :mod:`segrt.measure.harness`, evaluates each on CamVid val through ``Engine`` and writes
``NAME.json``, ``NAME.md`` and ``NAME.png`` through :mod:`segrt.measure.report`. A script supplies only what
differs: which rows to export and how, its extra measurements, its table and its plot.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segrt.measure.harness import Conditions, default_threads, time_latencies
from segrt.measure.report import write_report


def shared_data(repo: Path) -> Path:
    """CamVid next to the repository (``../shared``), or under ``$SEGRT_SHARED``."""
    return Path(os.environ.get("SEGRT_SHARED", repo.parent / "shared")) / "data" / "camvid"


@dataclass(kw_only=True)
class TimedRow:
    """One exported model in a method benchmark's table; scripts subclass it with their own columns."""

    name: str
    path: str = ""  # the exported ONNX file (only its name goes into the report)
    latencies_ms: list[float] = field(default_factory=list)
    p50_ms: float = 0.0
    speedup: float = 0.0  # p50 of the first row / p50 of this row
    miou: float | None = None
    pixel_accuracy: float | None = None


def add_common_args(parser: argparse.ArgumentParser, *, results: Path, data: Path, name: str,
                    rounds: int | None = 20, threads: int | None = None, cache: bool = True) -> None:
    """The flags every method benchmark takes (each keeps its own defaults)."""
    parser.add_argument("--data", type=Path, default=data, help="CamVid root")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N val images (default: all)")
    parser.add_argument("--rounds", type=int, default=rounds, help="timed interleaved rounds per row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=threads,
                        help="ONNX Runtime intra-op threads for every row (default: all CPUs of this process)")
    if cache:
        parser.add_argument("--cache", type=Path, default=None,
                            help="keep exports here and reuse them (same checkpoint and setting)")
    parser.add_argument("--out", type=Path, default=results)
    parser.add_argument("--name", default=name, help="result file stem")
    parser.add_argument("--quick", action="store_true", help="smoke run: random model, few images and rounds")


def resolve_threads(args: argparse.Namespace) -> None:
    args.threads = args.threads or default_threads()


def open_engines(rows: Sequence[TimedRow], threads: int | None, backend: str = "auto") -> dict:
    from segrt.runtime.engine import Engine

    return {r.name: Engine(r.path, backend=backend, threads=threads) for r in rows}


def close_engines(engines: dict) -> None:
    for engine in engines.values():
        engine.close()


def time_rows(rows: Sequence[TimedRow], engines: dict, inputs: Sequence[np.ndarray], args: argparse.Namespace,
              progress) -> Conditions:
    """Time the rows' networks interleaved (the harness's methodology); speed-ups are against the first row."""
    latencies = time_latencies({r.name: engines[r.name].backend.run for r in rows}, inputs, rounds=args.rounds,
                               warmup=args.warmup, threads=args.threads, progress=progress)
    for r in rows:
        r.latencies_ms = latencies.ms[r.name]
        r.p50_ms = latencies.p50(r.name)
    for r in rows:
        r.speedup = rows[0].p50_ms / r.p50_ms
    return latencies.conditions


def evaluate_row(row: TimedRow, engine, dataset, limit: int | None, predict: Callable | None = None) -> None:
    """CamVid val mIoU and pixel accuracy of one row through the shared evaluation loop."""
    from segrt.runtime.evaluate import evaluate

    metrics = evaluate(predict or engine.infer, dataset, limit=limit, description=f"eval {row.name}")
    row.miou, row.pixel_accuracy = metrics.miou, metrics.pixel_accuracy


def row_dicts(rows: Sequence[TimedRow]) -> list[dict]:
    """Rows as the JSON reports keep them: the export's file name, latencies to 0.01 ms."""
    return [{**asdict(r), "path": Path(r.path).name, "latencies_ms": [round(v, 2) for v in r.latencies_ms]}
            for r in rows]


def finish(args: argparse.Namespace, res: dict, markdown: Callable[[dict], str],
           plot: Callable[[dict, Path], None] | None, quick_suffix: bool = True) -> dict:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME.png`` (``NAME-quick.*`` for smoke runs) and print the table."""
    stem = args.name + ("-quick" if args.quick and quick_suffix else "")
    text = markdown(res)
    written = write_report(args.out, stem, res, text, plot)
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))
    return res
