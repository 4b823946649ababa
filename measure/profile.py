"""Which kernels ONNX Runtime actually ran, and where the time went, from its own profiler.

ONNX Runtime rewrites a graph when it creates a session (fusions, Q/DQ pairs folded into integer
kernels such as QLinearConv or MatMulIntegerToFloat), so the file on disk does not say what runs.
Its profiler records every executed kernel with the operator name and input types; this module
summarises that per operator type. numpy + onnxruntime only (no onnx, no torch).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrt.runtime.errors import BackendError

INTEGER_TYPES = ("uint8", "int8")


@dataclass
class OpTypeTime:
    op_type: str
    ms_per_run: float
    nodes: int  # distinct graph nodes of this type
    input_types: list[str] = field(default_factory=list)  # element types of the first input, e.g. ["uint8"]
    bytes_per_run: float = 0.0  # inputs + weights + outputs the kernels touched (the profiler's sizes)

    @property
    def integer(self) -> bool:
        return any(t in INTEGER_TYPES for t in self.input_types)


@dataclass
class KernelProfile:
    """Per-op-type kernel time of one model, averaged over ``runs`` profiled runs."""

    model: str
    runs: int
    threads: int | None
    total_ms_per_run: float
    op_types: list[OpTypeTime]

    def top(self, n: int = 12) -> list[OpTypeTime]:
        return sorted(self.op_types, key=lambda o: -o.ms_per_run)[:n]

    def integer_kernels(self) -> list[str]:
        """Kernels that multiply in integer arithmetic (not the Q/DQ conversions or data movement around them)."""
        return sorted(o.op_type for o in self.op_types if o.op_type.startswith("QLinear") or "Integer" in o.op_type)

    def to_dict(self) -> dict:
        return {"model": self.model, "runs": self.runs, "threads": self.threads,
                "total_ms_per_run": self.total_ms_per_run,
                "op_types": [{"op_type": o.op_type, "ms_per_run": o.ms_per_run, "nodes": o.nodes,
                              "input_types": o.input_types, "bytes_per_run": o.bytes_per_run}
                             for o in self.top(len(self.op_types))],
                "integer_kernels": self.integer_kernels()}


def parse_profile(events: list[dict], runs: int) -> tuple[float, list[OpTypeTime]]:
    """Aggregate ORT profiler events (``cat == "Node"``, ``*_kernel_time``) per operator type."""
    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    moved: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        op = args.get("op_name", "?")
        totals[op] += float(ev.get("dur", 0)) / 1000.0
        nodes[op].add(ev["name"])
        moved[op] += _bytes_of(args)
        shapes = args.get("input_type_shape") or []
        if shapes and isinstance(shapes[0], dict):
            types[op].update(shapes[0].keys())
    ops = [OpTypeTime(op, totals[op] / runs, len(nodes[op]), sorted(types[op]), moved[op] / runs) for op in totals]
    return sum(totals.values()) / runs, ops


ELEMENT_BYTES = {"float": 4, "float16": 2, "bfloat16": 2, "double": 8, "int64": 8, "int32": 4, "int16": 2,
                 "uint16": 2, "int8": 1, "uint8": 1, "bool": 1}


def _bytes_of(args: dict) -> float:
    """Bytes a kernel read and wrote: the profiler's activation + parameter + output sizes, else the
    element counts of its input and output shapes."""
    try:
        return float(sum(int(args[k]) for k in ("activation_size", "parameter_size", "output_size")))
    except (KeyError, TypeError, ValueError):
        pass
    total = 0.0
    for entry in (args.get("input_type_shape") or []) + (args.get("output_type_shape") or []):
        if isinstance(entry, dict):
            for kind, shape in entry.items():
                total += ELEMENT_BYTES.get(kind, 4) * float(np.prod(shape or [1]))
    return total


def profile_kernels(model: str | Path, batch: np.ndarray, runs: int = 5, threads: int | None = None,
                    warmup: int = 2) -> KernelProfile:
    """Run ``model`` with ONNX Runtime's profiler on; the warm-up runs are left out of the numbers."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="segrt-profile-") as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        try:
            sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: batch}
            for _ in range(warmup):
                sess.run(None, feed)
            for _ in range(runs):
                sess.run(None, feed)
            events = json.loads(Path(sess.end_profiling()).read_text())
        except Exception as exc:
            raise BackendError(f"profiling {model} with ONNX Runtime failed: {exc}") from exc
    # Warm-up runs are in the trace too: keep only the last ``runs`` model_run spans.
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(spans) >= runs:
        lo = spans[-runs][0]
        events = [e for e in events if e.get("cat") != "Node" or e.get("ts", 0) >= lo]
    total, ops = parse_profile(events, runs)
    return KernelProfile(str(model), runs, threads, total, ops)


def profile_group(candidates: Sequence, group: dict, frame: np.ndarray, threads: int | None,
                  runs: int = 5) -> dict[str, KernelProfile]:
    """Kernel profiles of the ONNX Runtime candidates measured in one ``benchmark_size`` group, on the
    frame and input size they were timed with (the ONNX file is the one the benchmark ran)."""
    from segrt.runtime.preprocess import frames_to_input

    size = tuple(group["size"])
    measured = {r["name"]: r for r in group["results"]}
    out = {}
    for cand in candidates:
        if cand.name not in measured or cand.kind != "onnxruntime":
            continue
        path = measured[cand.name]["info"].get("path")
        out[cand.name] = profile_kernels(path, frames_to_input([frame], size, cand.mean, cand.std), runs=runs,
                                         threads=threads)
    return out
