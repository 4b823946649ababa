"""Speed without retraining: decoder folding and Segformer++ token merging, measured in one run.

For each input size, exports the plain model (no folding, no merging) and every strategy (folded
decoder + none/2x2/hq/fast/downsample), then measures on this machine:

- ONNX Runtime CPU latency (p50 and p90 of interleaved, re-warmed runs: ``segrt.measure.harness``);
- speed-up of the p50 against the plain export;
- CamVid val mIoU through the shared evaluation code (``segrt eval``'s ``evaluate`` + Engine);
- pixel agreement of the predicted masks with the plain (unmerged, unfolded) model.

Writes ``merging.json``, ``merging.md`` and ``merging.png`` (speed-up vs mIoU) under
``benchmarks/results/``. Usage::

    python benchmarks/merging.py                       # bundled camvid-b0, 512x512 and 1024x1024
    python benchmarks/merging.py --quick               # random model, 512 only, 4 images: a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from segrt.measure import method_bench as mb
from segrt.measure.harness import load_average
from segrt.measure.report import annotate_points, pyplot, save_figure, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PLAIN = "plain"


@dataclass(kw_only=True)
class Candidate(mb.TimedRow):
    size: tuple[int, int]  # "plain" or a merge strategy (exported with the folded decoder) at this size
    export_rel_error: float = 0.0
    p90_ms: float = 0.0
    agreement: float = 0.0
    tokens: list[dict] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="checkpoint or bundled name (default camvid-b0; --quick: random:b0:11)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="square input sizes (default 512 1024)")
    p.add_argument("--strategies", nargs="+", default=None, help="merge strategies (default: all)")
    mb.add_common_args(p, results=RESULTS, data=mb.shared_data(REPO), name="merging", rounds=None, cache=False)
    args = p.parse_args(argv)
    args.model = args.model or ("random:b0:11" if args.quick else "camvid-b0")
    args.sizes = args.sizes or ([512] if args.quick else [512, 1024])
    args.rounds = args.rounds or (4 if args.quick else 20)
    args.limit = args.limit if args.limit is not None else (4 if args.quick else None)
    mb.resolve_threads(args)
    return args


def export_candidates(loaded, size: tuple[int, int], strategies: list[str], folder: Path, progress) -> list[Candidate]:
    from segrt.export.methods.merging.model import MATCHING_TOLERANCE, apply_merging, merge_config, plan_tokens
    from segrt.export.onnx_export import TOLERANCE, export_onnx

    out = []
    task = progress.add_task(f"export {size[0]}x{size[1]}", total=len(strategies) + 1, info="")
    for name in [PLAIN, *strategies]:
        progress.update(task, info=name)
        strategy = "none" if name == PLAIN else name
        model = apply_merging(loaded.model, strategy)
        path = folder / f"{name}-{size[0]}x{size[1]}.onnx"
        tolerance = MATCHING_TOLERANCE if merge_config(strategy).needs_static_size else TOLERANCE
        result = export_onnx(model, loaded.metadata, path, size=size, fold=name != PLAIN, tolerance=tolerance)
        tokens = [asdict(p) for p in plan_tokens(loaded.model.config, strategy, size)]
        out.append(Candidate(name=name, size=size, path=str(path), export_rel_error=result.max_rel_error,
                             tokens=tokens))
        progress.advance(task)
    return out


def evaluate_candidates(candidates: list[Candidate], engines: dict, dataset, limit: int | None) -> None:
    """mIoU through the shared evaluation loop; the plain model's masks are kept for agreement."""
    plain_masks: list[np.ndarray] = []
    for c in candidates:  # plain comes first
        masks: list[np.ndarray] = []

        def predict(frame, engine=engines[c.name], masks=masks):
            masks.append(engine.infer(frame))
            return masks[-1]

        mb.evaluate_row(c, engines[c.name], dataset, limit, predict)
        if c.name == PLAIN:
            plain_masks = masks
        same = sum(int((m == p).sum()) for m, p in zip(masks, plain_masks))
        c.agreement = same / sum(p.size for p in plain_masks)


def markdown(results: dict) -> str:
    rows = []
    for size, group in results["sizes"].items():
        base = next(c for c in group if c["name"] == PLAIN)
        for c in group:
            toks = ", ".join(f"{t['queries'][1]}/{t['keys_values'][1]}" for t in c["tokens"])
            rows.append([size, c["name"], f"{c['p50_ms']:.1f}", f"{c['p90_ms']:.1f}", f"{c['speedup']:.2f}x",
                         f"{100 * c['miou']:.2f}", f"{100 * (c['miou'] - base['miou']):+.2f}",
                         f"{100 * c['agreement']:.2f}%", f"{c['export_rel_error']:.1e}", toks])
    header = ["size", "strategy", "p50 ms", "p90 ms", "speed-up", "mIoU", "ΔmIoU (points)", "agreement",
              "ONNX vs PyTorch", "tokens (q / kv per stage)"]
    lines = [f"# Token merging and decoder folding: {results['model']}", "",
             (f"ONNX Runtime {results['onnxruntime']} CPU, {results['threads']} threads, {results['cpu']} "
              f"(load average {results['load_average_start']:.1f} at start, {results['load_average_end']:.1f} at end); "
              f"CamVid val ({results['images']} images); latency p50 over {results['rounds']} interleaved rounds. "
              "Every candidate except `plain` has the folded decoder."), "",
             *table(header, "llrrrrrrrl", rows), "", f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib.ticker

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (size, group), marker in zip(results["sizes"].items(), "os^D"):
        xs = [c["speedup"] for c in group]
        ys = [100 * c["miou"] for c in group]
        ax.scatter(xs, ys, marker=marker, label=size)
        labels = ["none (folded)" if c["name"] == "none" else c["name"] for c in group]
        annotate_points(ax, list(zip(labels, xs, ys)), dy=0.3)
    ax.axvline(2.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    label = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x")
    ax.xaxis.set_major_formatter(label)
    # minor ticks below 1x (the axis starts a little left of the plain export) would overprint "1x"
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x" if v > 1 else ""))
    ax.set_xlabel("speed-up vs plain export (ONNX Runtime CPU, p50)")
    ax.set_ylabel("CamVid val mIoU (%)")
    ax.set_title(f"{results['model']}: speed vs accuracy without retraining")
    ax.grid(alpha=0.3)
    ax.legend(title="input")
    save_figure(fig, path)


def main(argv=None) -> dict:
    import onnxruntime as ort

    from segrt.export.loading import load_model
    from segrt.export.methods.merging.model import STRATEGIES
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.preprocess import frames_to_input
    from segrt.runtime.progress import make_progress

    args = parse_args(argv)
    strategies = args.strategies or list(STRATEGIES)
    loaded = load_model(args.model)
    dataset = open_dataset(args.data, "camvid", "val")
    if len(loaded.metadata.classes) != len(dataset.classes):
        raise SystemExit(f"{args.model} has {len(loaded.metadata.classes)} classes; CamVid has {len(dataset.classes)}")
    images = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    command = "python benchmarks/merging.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {
        "model": args.model, "onnxruntime": ort.__version__, "threads": args.threads,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "images": images,
        "rounds": args.rounds, "load_average_start": load_average()[0], "command": command,
        "sizes": {}, "conditions": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.sizes:
            size = (s, s)
            with make_progress() as progress:
                candidates = export_candidates(loaded, size, strategies, Path(tmp), progress)
            engines = mb.open_engines(candidates, args.threads, backend="onnxruntime")
            x = frames_to_input([dataset.read_image(0)], size, loaded.metadata.mean, loaded.metadata.std)
            with make_progress() as progress:
                conditions = mb.time_rows(candidates, engines, [x], args, progress)
            for c in candidates:
                c.p90_ms = float(np.percentile(c.latencies_ms, 90))
            evaluate_candidates(candidates, engines, dataset, images)
            mb.close_engines(engines)
            results["sizes"][f"{s}x{s}"] = mb.row_dicts(candidates)
            results["conditions"][f"{s}x{s}"] = conditions.to_dict()
    results["load_average_end"] = load_average()[0]  # other work on the machine skews absolute latencies
    return mb.finish(args, results, markdown, plot, quick_suffix=False)


if __name__ == "__main__":
    main()
