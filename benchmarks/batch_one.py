"""What segrt's CPU sessions buy on ONNX Runtime, side by side in one interleaved run.

    python benchmarks/batch_one.py                      # the bundled camvid-b0 and camvid-b0-p27
    python benchmarks/batch_one.py --models m.onnx --rounds 20

segrt's backend (runtime/backends/onnxruntime.py) runs a model whose batch dimension is symbolic through a session
with that dimension fixed to 1 (``SessionOptions.add_free_dimension_override_by_name``; a batch runs frame by
frame), and leaves ONNX Runtime's MatMulAddFusion out (``CPU_DISABLED_OPTIMIZERS``). For each model this times,
in one interleaved run (``segrt.measure.harness``), three sessions of the same file: ``plain`` (the file as it
is, ONNX Runtime's defaults), ``batch 1`` (the batch fixed, ONNX Runtime's optimisers all on) and ``segrt``
(segrt's backend, both), on

- ``network``: the logits network alone (``frame_graph.network_of`` for a frame-form model), one prepared input;
- ``frame 1280x720``: the frame-form model on one 720p frame (frame-form models only);
- ``4 frames``: four 720p frames as one batch of 4 (plain), one by one (the others).

Every candidate is checked to give the same result (masks differing on at most 0.1% of pixels, logits within
1e-4) before it is timed. Writes
benchmarks/results/batch_one.json, .md and .png (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from segrt.export.passes import frame_graph as fg
from segrt.measure.harness import default_threads, run_interleaved
from segrt.measure.report import pyplot, save_figure, table, write_report
from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input
from segrt.runtime.samples import sample_frames

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = [REPO / "models" / "camvid-b0.onnx", REPO / "models" / "camvid-b0-p27.onnx"]
CAMERA = (720, 1280)
CANDIDATES = ("plain", "batch 1", "segrt")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, nargs="+", default=None, help="ONNX files (default: the bundled models)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 15; --quick 2)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all CPUs)")
    p.add_argument("--rewarm", type=int, default=2, help="untimed runs before each timed run (another session's "
                   "threads may still spin from its run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="the tiny frame-form test model, 2 rounds")
    args = p.parse_args(argv)
    args.models = args.models or ([REPO / "tests" / "fixtures" / "segformer-tiny-frame.onnx"] if args.quick
                                  else MODELS)
    args.rounds = args.rounds or (2 if args.quick else 15)
    args.threads = args.threads or default_threads()
    return args


def plain_session(path: Path, threads: int, batch_dim: str | None = None) -> ort.InferenceSession:
    """ONNX Runtime's CPU session of the file with ONNX Runtime's optimisers (all on), the batch dimension
    ``batch_dim`` fixed to 1 where given."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if batch_dim is not None:
        opts.add_free_dimension_override_by_name(batch_dim, 1)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def one_by_one(session: ort.InferenceSession, name: str, x: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def same(a: np.ndarray, b: np.ndarray) -> float:
    """How far the two results are apart: for masks the share of pixels that differ, for logits the largest
    difference. Float sums in another order (the sessions fuse different ops) may flip a pixel whose top two
    logits tie to ~1e-6; anything more is an error."""
    if a.shape != b.shape:
        sys.exit(f"results differ in shape: {a.shape} / {b.shape}")
    if a.dtype.kind in "ui":
        diff = float((a != b).mean())
        limit = 1e-3
    else:
        diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
        limit = 1e-4
    if diff > limit:
        sys.exit(f"results differ: {diff:.3g} (limit {limit:g})")
    return diff


def candidates_for(path: Path, scratch: Path, threads: int) -> tuple[dict, list]:
    """name -> (plain, batch 1, segrt) calls for one model, the largest difference from plain of each, and what
    to close."""
    model = onnx.load(str(path))
    frame_form = fg.is_frame_form(model)
    net_path = scratch / f"{path.stem}-network.onnx"
    onnx.save(fg.network_of(model) if frame_form else model, str(net_path))
    meta = ModelMetadata.from_onnx(onnx.load(str(net_path), load_external_data=False))
    if meta is None or meta.input_size is None:
        sys.exit(f"{path}: needs segrt metadata with a fixed network input size")
    samples = sample_frames()
    cam = [cv2.resize(samples[i % len(samples)], (CAMERA[1], CAMERA[0]), interpolation=cv2.INTER_AREA)
           for i in range(4)]
    x = frames_to_input([cam[0]], meta.input_size, meta.mean, meta.std)
    net_segrt = OnnxRuntimeBackend(net_path, threads=threads)
    net_plain, net_b1 = plain_session(net_path, threads), plain_session(net_path, threads, net_segrt.batch_dim)
    name = net_plain.get_inputs()[0].name
    pairs = {"network": (lambda: net_plain.run(None, {name: x})[0], lambda: net_b1.run(None, {name: x})[0],
                         lambda: net_segrt.run(x))}
    closers = [net_segrt]
    if frame_form:
        one, four = cam[0][None], np.stack(cam)
        frame_segrt = OnnxRuntimeBackend(path, threads=threads)
        frame_plain, frame_b1 = plain_session(path, threads), plain_session(path, threads, frame_segrt.batch_dim)
        closers.append(frame_segrt)
        pairs[f"frame {CAMERA[1]}x{CAMERA[0]}"] = (lambda: frame_plain.run(None, {"frame": one})[0],
                                                   lambda: frame_b1.run(None, {"frame": one})[0],
                                                   lambda: frame_segrt.run(one))
        pairs[f"4 frames {CAMERA[1]}x{CAMERA[0]}"] = (lambda: frame_plain.run(None, {"frame": four})[0],
                                                      lambda: one_by_one(frame_b1, "frame", four),
                                                      lambda: frame_segrt.run(four))
    diffs = {k: max(same(calls[0](), c()) for c in calls[1:]) for k, calls in pairs.items()}
    return {"pairs": pairs, "diffs": diffs, "batch_fixed": net_segrt.session.get_inputs()[0].shape[0] == 1}, closers


def measure(args: argparse.Namespace) -> dict:
    groups = []
    with tempfile.TemporaryDirectory() as scratch:
        for path in args.models:
            found, closers = candidates_for(path, Path(scratch), args.threads)
            names, calls = [], []
            for k, trio in found["pairs"].items():
                names += [f"{k}, {c}" for c in CANDIDATES]
                calls += list(trio)
            ms: dict[str, list[float]] = {n: [] for n in names}

            def timed(i: int, r: int, names=names, calls=calls, ms=ms) -> None:
                t0 = time.perf_counter()
                calls[i]()
                ms[names[i]].append(1000 * (time.perf_counter() - t0))

            conditions = run_interleaved(len(calls), lambda i, r, calls=calls: calls[i](), timed,
                                         rounds=args.rounds, warmup=2, rewarm=args.rewarm, threads=args.threads)
            for c in closers:
                c.close()
            p50 = {n: float(np.median(v)) for n, v in ms.items()}
            rows = [{"what": k, **{f"{c}_ms": p50[f"{k}, {c}"] for c in CANDIDATES},
                     "speedup": p50[f"{k}, plain"] / p50[f"{k}, segrt"],
                     "speedup_batch1": p50[f"{k}, plain"] / p50[f"{k}, batch 1"],
                     "largest_difference": found["diffs"][k]} for k in found["pairs"]]
            groups.append({"model": path.name, "batch_fixed": found["batch_fixed"], "rows": rows,
                           "conditions": conditions.to_dict()})
    return {"threads": args.threads, "rounds": args.rounds, "rewarm": args.rewarm,
            "cpu": platform.processor() or platform.machine(), "onnxruntime": ort.__version__, "groups": groups}


def markdown(data: dict) -> str:
    lines = ["# Batch-1 sessions on ONNX Runtime's CPU provider", "",
             f"ONNX Runtime {data['onnxruntime']}, {data['threads']} threads, {data['rounds']} interleaved rounds "
             f"({data['rewarm']} untimed runs before each timed one), p50. `plain`: the file as it is, ONNX "
             "Runtime's defaults; `batch 1`: the batch dimension fixed to 1 (a batch of 4 runs frame by frame), "
             "ONNX Runtime's optimisers all on; `segrt`: segrt's backend (batch 1, and MatMulAddFusion left out). "
             "Measured with `python benchmarks/batch_one.py`.", ""]
    for g in data["groups"]:
        load = (g["conditions"]["load_average_start"], g["conditions"]["load_average_end"])
        lines += [f"## {g['model']} (load average {load[0]} -> {load[1]})", ""]
        header = ["what", "plain ms", "batch 1 ms", "segrt ms", "batch 1 / plain", "segrt / plain",
                  "difference (mask pixels / logits)"]
        lines += table(header, "lrrrrrr", [[r["what"], f"{r['plain_ms']:.1f}", f"{r['batch 1_ms']:.1f}",
                                            f"{r['segrt_ms']:.1f}", f"{r['speedup_batch1']:.2f}x",
                                            f"{r['speedup']:.2f}x", f"{r['largest_difference']:.2g}"]
                                           for r in g["rows"]])
        lines.append("")
    return "\n".join(lines)


def plot(data: dict, png: Path) -> None:
    plt = pyplot()
    rows = [(f"{g['model']}\n{r['what']}", r) for g in data["groups"] for r in g["rows"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows)), 4.5))
    xs = np.arange(len(rows))
    for j, c in enumerate(CANDIDATES):
        ax.bar(xs + (j - 1) * 0.27, [r[f"{c}_ms"] for _, r in rows], 0.27, label=c)
    for x, (_, r) in zip(xs, rows):
        ax.annotate(f"{r['speedup']:.2f}x", (x + 0.27, r["segrt_ms"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [label for label, _ in rows], fontsize=7)
    ax.set_ylabel("p50 ms")
    ax.set_title(f"ONNX Runtime CPU, {data['threads']} threads")
    ax.legend(fontsize=8)
    save_figure(fig, png)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    data = measure(args)
    stem = "batch_one-quick" if args.quick else "batch_one"
    for path in write_report(args.out, stem, data, markdown(data), plot):
        print(f"wrote {path}")
    for g in data["groups"]:
        for r in g["rows"]:
            print(f"{g['model']}: {r['what']}: plain {r['plain_ms']:.1f}, batch 1 {r['batch 1_ms']:.1f}, segrt "
                  f"{r['segrt_ms']:.1f} ms ({r['speedup']:.2f}x)")
    return data


if __name__ == "__main__":
    main()
