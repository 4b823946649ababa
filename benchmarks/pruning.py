"""Pruned and distilled SegFormers against the bundled model: MACs, parameters, ONNX Runtime CPU
latency and CamVid val mIoU, each alone and with the training-free tier (decoder folding, token merging).

    python benchmarks/pruning.py --pruned50 runs/prune/b0-50.safetensors --pruned30 runs/prune/b0-30.safetensors \\
        --distilled runs/distill-b0-50/best.safetensors --distilled30 runs/distill-b0-30/best.safetensors \\
        --control runs/control-b0/best.safetensors
    python benchmarks/pruning.py --quick          # smoke run on random models, 4 images

Every model is exported with segrt's verified exporter: ``plain`` keeps the decoder as trained,
``fold`` is the exact decoder folding (export's default), ``fold+merge`` adds token merging
(one row per ``--merge`` strategy, default ``hq`` and ``fast``). MACs are counted on the exported graph
(segrt.export.passes.macs), parameters are the graph's initializers, latency is the p50 over interleaved,
re-warmed rounds (segrt.measure.harness: load from other processes hits every candidate alike), mIoU runs
the ONNX model through the runtime's Engine on CamVid val.
Folding is exact, so a folded model's mIoU equals its plain one's (it is still measured unless --reuse-exact).

Writes benchmarks/results/pruning.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrt.measure import method_bench as mb
from segrt.measure.report import fmt, pyplot, save_figure, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VARIANTS = ("plain", "fold", "fold+merge")


@dataclass(kw_only=True)
class Row(mb.TimedRow):
    model: str  # name: "model [variant]"
    variant: str
    source: str
    gmacs: float = 0.0
    params_m: float = 0.0
    speedup_vs_fold: float | None = None
    note: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundled", default=None, help="reference checkpoint (default camvid-b0; --quick: random:b0:11)")
    p.add_argument("--pruned50", default=None, help="checkpoint pruned to 50%% MACs")
    p.add_argument("--pruned30", default=None, help="checkpoint pruned to 30%% MACs")
    p.add_argument("--distilled", default=None, help="pruned (50%%) + distilled checkpoint")
    p.add_argument("--distilled30", default=None, help="pruned (30%%) + distilled checkpoint")
    p.add_argument("--control", default=None, help="unpruned model fine-tuned for as many iterations as the "
                   "distilled one (benchmarks/pruning_control.py)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                   help="variants of the bundled and the distilled model")
    p.add_argument("--distilled-variants", nargs="+", default=None, choices=VARIANTS,
                   help="variants of the distilled model (default: --variants)")
    p.add_argument("--pruned-variants", nargs="+", default=["fold"], choices=VARIANTS,
                   help="variants of the pruned models before distillation and of the control")
    p.add_argument("--merge", nargs="+", default=["hq", "fast"],
                   help="token-merging strategies: one fold+merge row each")
    p.add_argument("--size", default=None, help="HxW to export and time at (default: the bundled model's input size)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch threads for exporting (default: torch's)")
    p.add_argument("--reuse-exact", action="store_true",
                   help="take a folded model's mIoU from its plain export (exact rewrite)")
    p.add_argument("--export-only", action="store_true", help="export (into --cache) and stop")
    p.add_argument("--eval-only", action="store_true", help="export and evaluate (into --cache), no timing, no results")
    mb.add_common_args(p, results=RESULTS, data=mb.shared_data(REPO), name="pruning")
    args = p.parse_args(argv)
    args.bundled = args.bundled or ("random:b0:11" if args.quick else "camvid-b0")
    if args.quick:
        args.rounds, args.limit, args.size = 4, args.limit or 4, args.size or "128x160"
    mb.resolve_threads(args)
    return args


def quick_pruned(loaded, fraction: float):
    """--quick: a randomly pruned copy (no data needed) standing in for a real pruned checkpoint."""
    import random

    from segrt.export.methods.pruning.groups import PrunePlan, apply_plan
    from segrt.export.model.checkpoints import LoadedModel

    plan = PrunePlan.full(loaded.model.config)
    rng = random.Random(0)
    for stage in plan.mlp:
        for kept in stage:
            for i in rng.sample(kept, int(len(kept) * (1 - fraction))):
                kept.remove(i)
    plan.decoder = plan.decoder[: int(len(plan.decoder) * fraction)]
    return LoadedModel(apply_plan(loaded.model, plan).eval(), loaded.metadata, f"quick-pruned-{fraction}",
                       loaded.sha256)


def expand_variants(variants, merges) -> list[tuple[str, str]]:
    """(variant, merge strategy or "") pairs: fold+merge becomes one pair per strategy."""
    return [(v, m) for v in variants for m in (merges if v == "fold+merge" else [""])]


def base_variant(variant: str) -> str:
    return variant.split(":")[0]


def export_rows(label: str, loaded, variants, merges, size, folder: Path, progress) -> list[Row]:
    import onnx

    from segrt.export.methods.merging.model import MATCHING_TOLERANCE, apply_merging, merge_config
    from segrt.export.onnx_export import TOLERANCE, export_onnx
    from segrt.export.passes.macs import count_macs

    rows = []
    pairs = expand_variants(variants, merges)
    task = progress.add_task(f"export {label}", total=len(pairs), info="")
    for variant, merge in pairs:
        model = apply_merging(loaded.model, merge) if merge else loaded.model
        # bipartite matching can flip near-ties between PyTorch and ONNX Runtime (see export/merging.py)
        tolerance = MATCHING_TOLERANCE if merge and merge_config(merge).needs_static_size else TOLERANCE
        name = f"{variant}:{merge}" if merge else variant
        path = folder / f"{label}-{variant.replace('+', '-')}{'-' + merge if merge else ''}-{size[0]}x{size[1]}.onnx"
        stamp = path.with_suffix(".source")  # a cached export is reused only for the same checkpoint
        key = f"{loaded.sha256} {merge}"
        if not (path.exists() and stamp.exists() and stamp.read_text() == key):
            export_onnx(model, loaded.metadata, path, size=size, fold=variant != "plain", tolerance=tolerance)
            stamp.write_text(key)
        proto = onnx.load(str(path))
        params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer
                     if len(t.dims) > 1 or (t.dims and t.dims[0] > 1))
        rows.append(Row(name=f"{label} [{name}]", model=label, variant=name, source=loaded.source, path=str(path),
                        gmacs=count_macs(path).gmacs, params_m=params / 1e6, note=f"merge {merge}" if merge else ""))
        progress.advance(task)
    return rows


def add_speedup_vs_fold(rows: list[Row]) -> None:
    """How many times faster than the bundled model's folded export (what `segrt export` ships)."""
    fold = next((r.p50_ms for r in rows if r.model == rows[0].model and r.variant == "fold"), None)
    for r in rows:
        r.speedup_vs_fold = fold / r.p50_ms if fold else None


def miou_key(r: Row, limit) -> str:
    """Identifies one exported graph (checkpoint hash + merge, via the export's stamp) and the images."""
    stamp = Path(r.path).with_suffix(".source")
    return f"{Path(r.path).name} {stamp.read_text() if stamp.exists() else ''} limit={limit}"


def evaluate_rows(rows: list[Row], engines: dict, dataset, limit, reuse_exact: bool,
                  cache: Path | None = None) -> None:
    """mIoU of each row through the runtime's Engine. ``cache`` (JSON) keeps results per exported graph,
    so a long evaluation can run ahead of the one timed run (accuracy does not depend on machine load)."""
    from segrt.runtime.evaluate import evaluate

    known = json.loads(cache.read_text()) if cache and cache.exists() else {}
    plain = {}
    for r in rows:
        if reuse_exact and r.variant == "fold" and r.model in plain:
            r.miou, r.pixel_accuracy = plain[r.model]
            r.note = (r.note + "; " if r.note else "") + "mIoU of the plain export (folding is exact)"
            continue
        key = miou_key(r, limit)
        if key not in known:
            m = evaluate(engines[r.name].infer, dataset, limit=limit, description=f"eval {r.name}")
            known[key] = [m.miou, m.pixel_accuracy]
            if cache:
                cache.write_text(json.dumps(known, indent=1))
        r.miou, r.pixel_accuracy = known[key]
        if r.variant == "plain":
            plain[r.model] = (r.miou, r.pixel_accuracy)


def markdown(res: dict) -> str:
    rows = [[r["model"], r["variant"], f"{r['gmacs']:.3f}", f"{r['params_m']:.3f}", f"{r['p50_ms']:.1f}",
             f"{r['speedup']:.2f}x", fmt(r.get("speedup_vs_fold"), ".2f") + ("x" if r.get("speedup_vs_fold") else ""),
             fmt(None if r["miou"] is None else 100 * r["miou"], ".2f"),
             fmt(None if r["pixel_accuracy"] is None else 100 * r["pixel_accuracy"], ".2f")] for r in res["rows"]]
    header = ["model", "variant", "GMACs", "params (M)", "p50 ms", "speed-up", "vs fold", "mIoU", "pixel acc"]
    lines = [f"# Pruning and distillation vs {res['bundled']}", "",
             (f"ONNX Runtime {res['onnxruntime']} CPU, {res['threads']} threads, {res['cpu']}; input {res['size'][0]}x"
              f"{res['size'][1]}; CamVid val ({res['images']} images); latency p50 over {res['rounds']} interleaved "
              "rounds; speed-up vs the first row and vs the bundled model's folded export (what `segrt export` "
              "ships). "
              f"GMACs counted on the exported graph."), "",
             *table(header, "llrrrrrrr", rows)]
    notes = [f"- {r['model']} [{r['variant']}]: {r['note']}" for r in res["rows"] if r["note"]]
    sources = [f"- {k}: `{v}`" for k, v in res["sources"].items()]
    return "\n".join(lines + ["", "Sources:", *sources] + (["", "Notes:", *notes] if notes else [])) + "\n"


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    markers = {"plain": "o", "fold": "s", "fold+merge": "^"}
    models = list(dict.fromkeys(r["model"] for r in res["rows"]))
    colors = {m: plt.cm.tab10(i) for i, m in enumerate(models)}  # colour: model, marker: variant (legend, no labels)
    for r in res["rows"]:
        if r["miou"] is None:
            continue
        for ax, x in zip(axes, (r["gmacs"], r["p50_ms"])):
            ax.scatter(x, 100 * r["miou"], marker=markers[base_variant(r["variant"])], s=55, color=colors[r["model"]],
                       edgecolors="black" if r["variant"].endswith("fast") else "none",
                       label=f"{r['model']} {r['variant']}")
    axes[1].legend(fontsize=7, loc="lower right", ncol=1)
    axes[0].set_xlabel("GMACs (exported graph)")
    axes[1].set_xlabel(f"ONNX Runtime CPU p50 latency (ms, {res['size'][0]}x{res['size'][1]})")
    for ax in axes:
        ax.set_ylabel("CamVid val mIoU (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Pruning / distillation vs {res['bundled']}")
    save_figure(fig, path)


def main(argv=None) -> dict:
    import onnxruntime

    from segrt.export.loading import load_model
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.preprocess import frames_to_input
    from segrt.runtime.progress import make_progress

    args = parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    bundled = load_model(args.bundled)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else tuple(bundled.metadata.input_size
                                                                              or (384, 512))
    models = [("bundled", bundled)]
    for label, spec, fraction in (("control", args.control, None), ("pruned-50", args.pruned50, 0.5),
                                  ("pruned-50+distilled", args.distilled, None), ("pruned-30", args.pruned30, 0.3),
                                  ("pruned-30+distilled", args.distilled30, None)):
        if spec:
            models.append((label, load_model(spec)))
        elif args.quick and fraction:
            models.append((label, quick_pruned(bundled, fraction)))
    dataset = open_dataset(str(args.data), "camvid", "val")
    with tempfile.TemporaryDirectory() as tmp, make_progress() as progress:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        for label, loaded in models:
            # the undistilled pruned models and the control are accuracy references: --pruned-variants
            variants = args.pruned_variants if label in ("pruned-50", "pruned-30", "control") else args.variants
            if label.endswith("distilled") and args.distilled_variants:
                variants = args.distilled_variants
            rows += export_rows(label, loaded, variants, args.merge, size, folder, progress)
        if args.export_only:
            return {"exported": [r.path for r in rows]}
        engines = mb.open_engines(rows, args.threads)
        img, _ = dataset[0]
        x = frames_to_input([img], size, bundled.metadata.mean, bundled.metadata.std)
        miou_cache = args.cache / "miou.json" if args.cache else None
        if args.eval_only:
            evaluate_rows(rows, engines, dataset, args.limit, args.reuse_exact, miou_cache)
            return {"evaluated": [r.name for r in rows]}
        conditions = mb.time_rows(rows, engines, [x], args, progress)
        add_speedup_vs_fold(rows)
        evaluate_rows(rows, engines, dataset, args.limit, args.reuse_exact, miou_cache)
        mb.close_engines(engines)
    res = {"bundled": args.bundled, "size": list(size), "threads": args.threads, "rounds": args.rounds,
           "images": min(args.limit or len(dataset), len(dataset)), "onnxruntime": onnxruntime.__version__,
           "cpu": platform.processor() or platform.machine(), "merge": args.merge,
           "sources": {label: loaded.source for label, loaded in models},
           "conditions": conditions.to_dict(), "rows": mb.row_dicts(rows)}
    return mb.finish(args, res, markdown, plot)


if __name__ == "__main__":
    main()
