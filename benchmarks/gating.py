"""Dynamic gated Mix-FFN neurons (DynaSegFormer) against the bundled model, in one run: ONNX Runtime CPU
latency (interleaved), CamVid val mIoU through Engine, and how compute varies across images.

    python benchmarks/gating.py     # the bundled models/camvid-b0-gate30.safetensors
    python benchmarks/gating.py --quick       # smoke run: random B0, gates calibrated on the fly, 4 images

Rows (all exported with segrt's verified exporter, decoder folded, static input size):
- ``bundled``: the unpruned bundled model.
- ``gated topk``: fixed keep ratio; TopK over the gate scores, Gather, MatMul on k neurons (static shapes).
- ``gated threshold``: dynamic ratio; every neuron scoring above the threshold (ONNX Runtime, batch 1).
- ``gated static``: the yardstick for "is choosing per image worth it": the trained gates frozen on training
  images into a smaller dense model with the same k per block (no TopK, no gathers, constant weights).
- ``..., k multiple of 16``: topk and static with every k rounded to a multiple of ``--align``: ONNX
  Runtime's blocked (NCHWc) convolutions only take channel counts it can block.

Latency: each round feeds the same CamVid val image to every model, in alternating order (load from other
processes hits all alike), cycling through the first ``--latency-images`` val images because the dynamic
variant's cost depends on the image; p50 and mean over rounds. MACs: counted on the exported graph for the
static models (segrt.export.passes.macs); for the dynamic variant per image, as the dense count minus the Mix-FFN
work of the neurons its gates skipped on that image (kept counts from the PyTorch gated model, which the
export is verified against). Writes benchmarks/results/gating.{json,md,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrt.measure import method_bench as mb
from segrt.measure.harness import load_average
from segrt.measure.report import fmt, pyplot, save_figure, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_GATED = REPO / "models" / "camvid-b0-gate30.safetensors"
DEFAULT_TRAINING = RESULTS / "gate-b0-30-training.json"  # how DEFAULT_GATED was trained (its run folder is not kept)
BUNDLED_NATIVE_MIOU = 0.5291  # models/camvid-b0.md: PyTorch, CamVid val, 384x512


MODES = ("topk", "threshold", "static")


@dataclass(kw_only=True)
class Row(mb.TimedRow):
    gmacs: float = 0.0
    mean_ms: float = 0.0
    max_rel_error: float | None = None  # ONNX vs its PyTorch model at export (verification)
    note: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundled", default=None, help="unpruned model (default camvid-b0; --quick: random:b0:11)")
    p.add_argument("--gated", type=Path, default=None,
                   help=f"gated checkpoint from `segrt gate` (default {DEFAULT_GATED})")
    p.add_argument("--size", default="512x512", help="HxW to export, time and evaluate at")
    p.add_argument("--latency-images", type=int, default=10, help="val images the latency rounds cycle through")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="gated rows (default: all)")
    p.add_argument("--align", type=int, default=16,
                   help="the aligned rows (topk, static) round every block's k to a multiple of this; 1: no such rows")
    p.add_argument("--calibrate", type=int, default=64, help="training images that freeze the gates (static rows)")
    p.add_argument("--training", type=Path, default=None,
                   help="best.json of the gate training run (default: next to --gated), quoted in the table's notes")
    mb.add_common_args(p, results=RESULTS, data=mb.shared_data(REPO), name="gating", threads=2)
    args = p.parse_args(argv)
    args.bundled = args.bundled or ("random:b0:11" if args.quick else "camvid-b0")
    if args.quick:
        args.rounds, args.limit, args.size, args.latency_images, args.calibrate = 4, args.limit or 4, "128x160", 2, 4
    elif args.gated is None:
        args.gated = DEFAULT_GATED
    if args.gated == DEFAULT_GATED:
        args.training = args.training or DEFAULT_TRAINING
    mb.resolve_threads(args)
    return args


def quick_gated(bundled, data: Path, size):
    """--quick: the random model with gates calibrated on 4 training images (no training run needed)."""
    from segrt.export.methods.gating.model import GATING_KEY, GatingConfig, attach_gates, calibrate_gates
    from segrt.export.methods.gating.recipe import calibration_batches
    from segrt.export.model.checkpoints import LoadedModel

    cfg = GatingConfig(keep_ratio=0.5)
    model = attach_gates(bundled.model, cfg)  # a gated copy: the bundled model is untouched
    meta = bundled.metadata
    calibrate_gates(model, calibration_batches(str(data), "camvid", 4, size, meta.mean, meta.std), 0.5)
    meta = copy.deepcopy(bundled.metadata)
    meta.extra = {**meta.extra, GATING_KEY: cfg.to_json()}
    return LoadedModel(model.eval(), meta, "quick-gated", bundled.sha256 + "-gated")


def cached_export(label: str, loaded, folder: Path, size, export) -> tuple[Path, float | None]:
    """Export once per checkpoint: a stamp file next to the ONNX records which checkpoint it came from."""
    path = folder / f"{label}-{size[0]}x{size[1]}.onnx"
    stamp = path.with_suffix(".source")
    if path.exists() and stamp.exists() and json.loads(stamp.read_text())["sha256"] == loaded.sha256:
        return path, json.loads(stamp.read_text())["max_rel_error"]
    result = export(path)
    stamp.write_text(json.dumps({"sha256": loaded.sha256, "max_rel_error": result.max_rel_error}))
    return path, result.max_rel_error


def per_image_compute(gated, dataset, size, limit, dense_macs: int, progress) -> list[dict]:
    """Kept neurons per block and total MACs of the dynamic (threshold) variant on every val image."""
    import torch

    from segrt.export.methods.gating.model import gated_blocks, kept_per_block, mlp_savings, set_mode
    from segrt.runtime.preprocess import frames_to_input

    model = set_mode(copy.deepcopy(gated.model).eval(), "threshold")
    hidden = [b.hidden for b in gated_blocks(model)]
    n = min(limit or len(dataset), len(dataset))
    out = []
    task = progress.add_task("kept neurons", total=n, info="threshold gates")
    with torch.no_grad():
        for i in range(n):
            frame = dataset.read_image(i)
            x = torch.from_numpy(frames_to_input([frame], size, gated.metadata.mean, gated.metadata.std))
            model(x)
            kept = kept_per_block(model)
            macs = dense_macs - mlp_savings(model, size, kept, dense_dwconv=True)  # as the threshold export runs
            out.append({"image": Path(dataset.images[i]).name, "kept": kept,
                        "kept_fraction": sum(kept) / sum(hidden), "gmacs": macs / 1e9,
                        "sets": [set(b.kept_index.tolist()) for b in gated_blocks(model)]})
            progress.advance(task)
    add_switching(out, hidden)
    return out


def add_switching(per_image: list[dict], hidden: list[int]) -> None:
    """How input-dependent the gates are: a block's static core is the neurons its gates keep on at least half
    of the images; ``switched`` is, per image, the fraction of its kept neurons outside the core (0: the gates
    act as static pruning). Replaces the per-image index sets by that number."""
    cores = []
    for b, width in enumerate(hidden):
        votes = np.zeros(width)
        for p in per_image:
            votes[list(p["sets"][b])] += 1
        cores.append(set(np.flatnonzero(votes >= len(per_image) / 2).tolist()))
    for p in per_image:
        sets = p.pop("sets")
        p["switched"] = sum(len(s - c) for s, c in zip(sets, cores)) / max(1, sum(len(s) for s in sets))


def summary(values: list[float]) -> dict:
    a = np.asarray(values, np.float64)
    return {"min": float(a.min()), "p5": float(np.percentile(a, 5)), "median": float(np.median(a)),
            "mean": float(a.mean()), "p95": float(np.percentile(a, 95)), "max": float(a.max()), "std": float(a.std())}


def markdown(res: dict) -> str:
    size = f"{res['size'][0]}x{res['size'][1]}"
    lines = [f"# Dynamic gated Mix-FFN neurons (DynaSegFormer) vs {res['bundled']}", "",
             (f"ONNX Runtime {res['onnxruntime']} CPU, {res['threads']} threads, {res['cpu']}, load average at start "
              f"{res['load_average']}; input {size}; latency p50/mean over {res['rounds']} interleaved rounds cycling "
              f"through {res['latency_images']} CamVid val images; speed-up = bundled p50 / row p50. mIoU through "
              f"`Engine` on CamVid val ({res['images']} images) at {size}."), ""]
    base = res["rows"][0]["miou"]
    rows = [[r["name"], f"{r['gmacs']:.3f}", f"{r['p50_ms']:.1f}", f"{r['mean_ms']:.1f}", f"{r['speedup']:.2f}x",
             fmt(None if r["miou"] is None else 100 * r["miou"], ".2f"),
             fmt(None if r["miou"] is None or base is None else 100 * (r["miou"] - base), "+.2f"),
             fmt(None if r["pixel_accuracy"] is None else 100 * r["pixel_accuracy"], ".2f"),
             fmt(r["max_rel_error"], ".1e")] for r in res["rows"]]
    lines += table(["model", "GMACs", "p50 ms", "mean ms", "speed-up", "mIoU", "ΔmIoU vs bundled (same size)",
                    "pixel acc", "ONNX vs PyTorch"], "lrrrrrrrr", rows)
    c = res["compute"]
    per_block = ", ".join(f"{k:.0f}/{h}" for k, h in zip(c["kept_mean_per_block"], c["hidden"]))
    lines += ["", (f"Dynamic variant, per image over {c['images']} val images: kept fraction of Mix-FFN neurons "
              f"median {c['kept_fraction']['median']:.3f} (min {c['kept_fraction']['min']:.3f}, max "
              f"{c['kept_fraction']['max']:.3f}, std {c['kept_fraction']['std']:.4f}); GMACs median "
              f"{c['gmacs']['median']:.3f} (min {c['gmacs']['min']:.3f}, max {c['gmacs']['max']:.3f}); "
              f"per block mean kept / dense: {per_block}. "
              f"Kept neurons outside the static core (kept on at least half of the images): median "
              f"{100 * c['switched']['median']:.1f}% per image (min {100 * c['switched']['min']:.1f}%, max "
              f"{100 * c['switched']['max']:.1f}%)."),
              "", f"Bundled model's reference mIoU at its native 384x512 (PyTorch): {100 * BUNDLED_NATIVE_MIOU:.2f}."]
    if res.get("training"):
        t = res["training"]
        lines.append(f"Gated model in PyTorch (mask mode = dynamic variant) at its training validation, 384x512: "
                     f"{100 * t['miou']:.2f} mIoU (iteration {t['iteration']}), ΔmIoU vs 52.91: "
                     f"{100 * (t['miou'] - BUNDLED_NATIVE_MIOU):+.2f}.")
    lines += ["", "Sources:", *[f"- {k}: `{v}`" for k, v in res["sources"].items()]]
    notes = [f"- {r['name']}: {r['note']}" for r in res["rows"] if r["note"]]
    return "\n".join(lines + (["", "Notes:", *notes] if notes else [])) + "\n"


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    per = res["compute"]["per_image"]
    rows = {r["name"]: r for r in res["rows"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].hist([p["kept_fraction"] for p in per], bins=20, color="tab:blue", alpha=0.8)
    axes[0].axvline(res["keep_ratio"], color="tab:orange", ls="--", label=f"fixed TopK ratio {res['keep_ratio']}")
    axes[0].set_xlabel("kept fraction of Mix-FFN hidden neurons (threshold gates)")
    axes[1].hist([p["gmacs"] for p in per], bins=20, color="tab:green", alpha=0.8)
    for name, style in (("bundled", ":"), ("gated topk", "--")):
        if name in rows:
            axes[1].axvline(rows[name]["gmacs"], color="k" if name == "bundled" else "tab:orange", ls=style,
                            label=f"{name} {rows[name]['gmacs']:.3f}")
    axes[1].set_xlabel(f"GMACs per image at {res['size'][0]}x{res['size'][1]}")
    axes[2].hist([100 * p["switched"] for p in per], bins=20, color="tab:purple", alpha=0.8)
    axes[2].set_xlabel("% of an image's kept neurons outside the static core")
    for ax in axes:
        ax.set_ylabel(f"CamVid val images (of {len(per)})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Dynamic gated Mix-FFN: compute per image")
    save_figure(fig, path)


def main(argv=None) -> dict:
    import onnxruntime

    from segrt.export.loading import load_model
    from segrt.export.methods.gating.model import gated_blocks, gating_config, kept_count
    from segrt.export.methods.gating.recipe import calibration_batches, export_gated
    from segrt.export.onnx_export import export_onnx
    from segrt.export.passes.macs import count_macs
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.preprocess import frames_to_input
    from segrt.runtime.progress import make_progress

    args = parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    load_at_start = load_average()[0]
    bundled = load_model(args.bundled)
    gated = quick_gated(bundled, args.data, size) if args.quick else load_model(str(args.gated))
    cfg = gating_config(gated.model)
    if cfg is None:
        raise SystemExit(f"{args.gated} has no gated Mix-FFN blocks; train one with `segrt gate`")
    dataset = open_dataset(str(args.data), "camvid", "val")
    with tempfile.TemporaryDirectory() as tmp, make_progress() as progress:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        variants = [(mode, 1) for mode in args.modes]
        variants += [(mode, args.align) for mode in args.modes if mode != "threshold" and args.align > 1]
        task = progress.add_task("export", total=1 + len(variants), info="")
        rows = []
        path, err = cached_export("bundled-fold", bundled, folder, size,
                                  lambda p: export_onnx(bundled.model, bundled.metadata, p, size=size))
        rows.append(Row(name="bundled", path=str(path), gmacs=count_macs(path).gmacs, max_rel_error=err,
                        note="decoder folded"))
        progress.advance(task)
        calibration = None
        for mode, align in variants:
            if mode == "static" and calibration is None:
                calibration = calibration_batches(str(args.data), "camvid", args.calibrate, size, gated.metadata.mean,
                                                  gated.metadata.std)
            tag = mode + (f"-align{align}" if align > 1 else "")

            def export(p, m=mode, a=align, c=calibration):
                return export_gated(gated.model, gated.metadata, p, m, size=size, calibration=c, align=a)

            path, err = cached_export(f"gated-{tag}", gated, folder, size, export)
            ks = [kept_count(b.hidden, cfg.keep_ratio, align) for b in gated_blocks(gated.model)]
            note = {"topk": f"TopK per image, k per block: {ks}",
                    "threshold": f"score > {cfg.threshold}, per image; GMACs = median over images",
                    "static": f"gates frozen on {args.calibrate} training images, k per block: {ks}"}[mode]
            name = f"gated {mode}" + (f", k multiple of {align}" if align > 1 else "")
            rows.append(Row(name=name, path=str(path), gmacs=count_macs(path).gmacs if mode != "threshold" else 0.0,
                            max_rel_error=err, note=note))
            progress.advance(task)
        dense = round(rows[0].gmacs * 1e9)
        per_image = per_image_compute(gated, dataset, size, args.limit, dense, progress)
        for r in rows:
            if r.name == "gated threshold":  # its MACs depend on the image
                r.gmacs = float(np.median([p["gmacs"] for p in per_image]))
        engines = mb.open_engines(rows, args.threads)
        inputs = [frames_to_input([dataset.read_image(i)], size, bundled.metadata.mean, bundled.metadata.std)
                  for i in range(min(args.latency_images, len(dataset)))]
        conditions = mb.time_rows(rows, engines, inputs, args, progress)
        for r in rows:
            r.mean_ms = statistics.fmean(r.latencies_ms)
            mb.evaluate_row(r, engines[r.name], dataset, args.limit)
        mb.close_engines(engines)
    hidden = [b.hidden for b in gated_blocks(gated.model)]
    training = None
    best = args.training or (args.gated.parent / "best.json" if args.gated else None)
    if not args.quick and best is not None and best.exists():
        training = json.loads(best.read_text())
        training = training.get("best", training)  # a run's best.json, or benchmarks/results/*-training.json
    res = {"bundled": args.bundled, "size": list(size), "threads": args.threads, "rounds": args.rounds,
           "latency_images": len(inputs), "images": min(args.limit or len(dataset), len(dataset)),
           "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
           "load_average": load_at_start, "keep_ratio": cfg.keep_ratio, "threshold": cfg.threshold,
           "sources": {"bundled": bundled.source, "gated": gated.source},
           "training": training,
           "conditions": conditions.to_dict(), "rows": mb.row_dicts(rows),
           "compute": {"images": len(per_image), "hidden": hidden,
                       "kept_fraction": summary([p["kept_fraction"] for p in per_image]),
                       "switched": summary([p["switched"] for p in per_image]),
                       "gmacs": summary([p["gmacs"] for p in per_image]),
                       "kept_mean_per_block": [float(np.mean([p["kept"][b] for p in per_image]))
                                               for b in range(len(hidden))],
                       "per_image": per_image}}
    return mb.finish(args, res, markdown, plot)


if __name__ == "__main__":
    main()
