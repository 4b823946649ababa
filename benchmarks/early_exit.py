"""Early exit (DToP token pruning) against the bundled model, in one run: where the MACs are, ONNX Runtime
CPU latency (interleaved), CamVid val mIoU through ``Engine``, and the fraction of tokens exited per image.

    python benchmarks/early_exit.py --point s1b1 --dwconv zeros --name early_exit_s1b1   # bundled heads
    python benchmarks/early_exit.py --quick       # smoke run: random heads, 4 images, 4 rounds, 128x160

Rows: the bundled model exported as segrt ships it (decoder folded), fixed-budget exports (TopK, static
shapes), threshold exports (NonZero, data-dependent token counts) and the ceiling (every block after the
exit point removed: not a model, the bound on what any exit there can gain). Every export is verified against its
PyTorch model by ``export_onnx``. Latency is the p50 over interleaved rounds that cycle through
``--latency-images`` CamVid val frames (a threshold model's cost depends on the image; every model sees
the same frame in a round). MACs: counted on the exported graph for static rows; for threshold rows,
per image, from the token counts the graph really computed (read back from its NonZero outputs) and the
per-token MACs of each pruned stage (PyTorch FLOP counter; the MACs of a sparse stage are linear in
its token count).

Writes benchmarks/results/NAME.{json,md,png} (``--name``, default early_exit).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrt.measure import method_bench as mb
from segrt.measure.harness import load_average
from segrt.measure.report import fmt, pyplot, save_figure, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_HEADS = REPO / "models" / "camvid-b0-exit.safetensors"


@dataclass(kw_only=True)
class Row(mb.TimedRow):
    mode: str  # "bundled", "budget", "threshold", "ceiling"
    setting: str = ""
    export_error: float = 0.0
    gmacs: float = 0.0  # static rows: exported graph; threshold rows: mean over val images
    exited: list[float] = field(default_factory=list)  # per val image, fraction of the exit grid
    stage4_computed: list[float] = field(default_factory=list)  # per val image, fraction of stage-4 tokens
    gmacs_per_image: list[float] = field(default_factory=list)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint (default camvid-b0; --quick: random:b0:11)")
    p.add_argument("--heads", type=Path, default=DEFAULT_HEADS, help="exit_heads.safetensors from `segrt exit train`")
    p.add_argument("--point", default="s2b0")
    p.add_argument("--dwconv", default="grid", choices=("zeros", "grid"))
    p.add_argument("--context", type=int, default=4)
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.9, 0.97])
    p.add_argument("--budgets", type=float, nargs="*", default=[0.5, 0.25])
    p.add_argument("--size", default="512x512", help="HxW to export, time and evaluate at")
    p.add_argument("--latency-images", type=int, default=10)
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the ceiling row (the model without the blocks after the exit point: an upper bound)")
    mb.add_common_args(p, results=RESULTS, data=mb.shared_data(REPO), name="early_exit", threads=2)
    args = p.parse_args(argv)
    args.model = args.model or ("random:b0:11" if args.quick else "camvid-b0")
    if args.quick:
        args.rounds, args.limit, args.size, args.latency_images = 4, args.limit or 4, "128x160", 2
    args.size = tuple(int(v) for v in args.size.split("x"))
    mb.resolve_threads(args)
    return args


def mac_breakdown(model, heads, point: str, dwconv: str, size) -> dict:
    """MACs per part of the folded model at ``size``, and the per-token MACs of every pruned stage (the
    most early exit can remove is every token but one per pruned grid)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segrt.export.methods.early_exit.model import ExitConfig, attach_exit, parse_exit_name, sparse_stage_macs
    from segrt.export.methods.folding import fold_decoder

    def counted(module) -> dict[str, float]:
        fc = FlopCounterMode(display=False, depth=None)
        with fc, torch.no_grad():
            module(torch.zeros(1, 3, *size))
        return {k: sum(v.values()) / 2 for k, v in fc.get_flop_counts().items()}

    plain = counted(fold_decoder(model))
    short = {k.split(".", 1)[-1]: v for k, v in plain.items()}
    parts = {}
    for i in range(len(model.encoder.stages)):
        embed = short.get(f"encoder.stages.{i}.patch_embeddings", 0.0)
        parts[f"stage {i + 1} patch embedding"] = embed
        parts[f"stage {i + 1} blocks"] = short.get(f"encoder.stages.{i}", 0.0) - embed
    parts["decoder (folded)"] = short.get("decode_head", 0.0)
    exit_model = attach_exit(model, heads, ExitConfig(point=point, threshold=1.0, dwconv=dwconv))
    full = counted(fold_decoder(exit_model))["Global"]  # every token computed (nothing exits at 1.0)
    with torch.no_grad():
        exit_model(torch.zeros(1, 3, *size))
    stats = exit_model.last_stats
    stage = parse_exit_name(point)[0]
    per_token, touchable = {}, {}
    for s in range(stage, len(stats.tokens)):
        n = stats.tokens[s]
        span = sparse_stage_macs(exit_model, s, stats.grids[s], n) - sparse_stage_macs(exit_model, s, stats.grids[s], 1)
        per_token[s], touchable[s] = span / max(n - 1, 1), span
    head = exit_model.head.classifier
    return {"total": plain["Global"], "parts": parts, "exit_model_full": full, "per_token": per_token,
            "touchable_by_stage": touchable, "touchable": sum(touchable.values()),
            "aux_head": stats.tokens[stage] * head.in_features * head.out_features,
            "exit_stage": stage, "grid_tokens": stats.tokens}


def macs_for_counts(macs: dict, counts: list[int]) -> float:
    """MACs of the exit model when the pruned stages compute ``counts`` tokens (linear in each count)."""
    stage, grids = macs["exit_stage"], macs["grid_tokens"]
    removed = sum(macs["per_token"][s] * (grids[s] - c) for s, c in zip(range(stage, len(grids)), counts))
    return macs["exit_model_full"] - removed


def ceiling_model(model, point: str):
    """Not a usable model: every block after the exit point removed, so no early-exit graph can be faster.
    Its latency is the ceiling of what exiting tokens at ``point`` can save on this machine."""
    import copy

    from torch import nn

    from segrt.export.methods.early_exit.model import parse_exit_name

    class _Skip(nn.Module):
        def forward(self, x, h, w):
            return x

    stage, block = parse_exit_name(point)
    cut = copy.deepcopy(model)
    for s, st in enumerate(cut.encoder.stages):
        for b in range(len(st.blocks)):
            if s > stage or (s == stage and b >= block):
                st.blocks[b] = _Skip()
    return cut


def export_rows(args, loaded, heads, folder: Path, progress) -> tuple[list[Row], dict]:
    from segrt.export.methods.early_exit.model import ExitConfig, attach_exit
    from segrt.export.onnx_export import export_onnx
    from segrt.export.passes.macs import count_macs

    specs = [("bundled (folded)", "bundled", None)]
    common = {"point": args.point, "context": args.context, "dwconv": args.dwconv}
    specs += [(f"budget keep {r:g}", "budget", ExitConfig(mode="budget", keep_ratio=r, **common))
              for r in args.budgets]
    specs += [(f"threshold {t:g}", "threshold", ExitConfig(mode="threshold", threshold=t, **common))
              for t in args.thresholds]
    if args.ceiling:
        specs.append((f"ceiling: blocks after {args.point} removed", "ceiling", None))
    rows, configs = [], {}
    task = progress.add_task("export", total=len(specs), info="")
    for name, mode, cfg in specs:
        model = attach_exit(loaded.model, heads, cfg) if cfg is not None else (
            ceiling_model(loaded.model, args.point) if mode == "ceiling" else loaded.model)
        tag = mode if cfg is None else cfg.to_json()
        stem = name.replace(" ", "-").replace("(", "").replace(")", "").replace(":", "")
        path = folder / f"{stem}-{args.size[0]}x{args.size[1]}.onnx"
        stamp = path.with_suffix(".source")
        key = f"{loaded.sha256} {tag} {args.heads}"
        if not (path.exists() and stamp.exists() and stamp.read_text().split("\n")[0] == key):
            res = export_onnx(model, loaded.metadata, path, size=args.size)
            stamp.write_text(f"{key}\n{res.max_rel_error}")
        err = float(stamp.read_text().split("\n")[1])
        row = Row(name=name, mode=mode, setting="" if cfg is None else cfg.to_json(), path=str(path),
                  export_error=err)
        if mode != "threshold":
            row.gmacs = count_macs(path).gmacs
        rows.append(row)
        configs[name] = cfg
        progress.advance(task)
    return rows, configs


def token_stats(row: Row, dataset, limit, meta, size, macs: dict, progress, threads) -> None:
    """Per val image: tokens the threshold graph computed -> fraction exited, MACs."""
    from segrt.export.methods.early_exit.model import TokenProbe
    from segrt.runtime.preprocess import frames_to_input

    probe = TokenProbe(row.path, threads=threads)
    n = min(limit or len(dataset), len(dataset))
    stage, grids = macs["exit_stage"], macs["grid_tokens"]
    task = progress.add_task(f"tokens {row.name}", total=n, info="")
    for i in range(n):
        img = dataset.read_image(i)
        counts = probe(frames_to_input([img], size, meta.mean, meta.std))
        row.exited.append(1.0 - counts[0] / grids[stage])
        row.stage4_computed.append(counts[-1] / grids[-1])
        row.gmacs_per_image.append(macs_for_counts(macs, counts) / 1e9)
        progress.advance(task)
    row.gmacs = float(np.mean(row.gmacs_per_image))


def markdown(res: dict) -> str:
    m = res["macs"]
    total = m["total"]
    lines = [f"# Early exit (DToP token pruning) vs {res['model']}", "",
             (f"ONNX Runtime {res['onnxruntime']} CPU, {res['threads']} threads, {res['cpu']}; input {res['size'][0]}x"
              f"{res['size'][1]}; CamVid val ({res['images']} images) through `Engine`; latency p50 over "
              f"{res['rounds']} "
              f"interleaved rounds cycling through {res['latency_images']} val frames; speed-up vs the first row. "
              f"Exit point {res['point']} (0-based stage {res['exit_stage']}, 1/{4 * 2 ** res['exit_stage']} grid), "
              f"dwconv {res['dwconv']}, context {res['context']} tokens per class; heads `{res['heads']}`. Load "
              f"average at start {res['load_start']}, at end {res['load_end']}."), ""]
    base = res["rows"][0]["miou"]
    rows = []
    for r in res["rows"]:
        if r["mode"] == "threshold" and r["exited"]:
            ex = f"{100 * np.mean(r['exited']):.1f}% ({100 * min(r['exited']):.0f}-{100 * max(r['exited']):.0f}%)"
        elif r["mode"] == "budget":
            ex = f"{100 * r['fixed_exited']:.1f}% (fixed)"
        else:
            ex = "-"
        gm = f"{r['gmacs']:.3f}" + (" (mean)" if r["mode"] == "threshold" else "")
        rows.append([r["name"], gm, f"{r['p50_ms']:.1f}", f"{r['speedup']:.2f}x",
                     fmt(None if r["miou"] is None else 100 * r["miou"], ".2f"),
                     fmt(None if r["miou"] is None or base is None else 100 * (r["miou"] - base), "+.2f"),
                     fmt(None if r["pixel_accuracy"] is None else 100 * r["pixel_accuracy"], ".2f"), ex,
                     f"{r['export_error']:.1e}"])
    lines += table(["model", "GMACs", "p50 ms", "speed-up", "mIoU", "change", "pixel acc",
                    "tokens exited (mean, min-max)", "export rel. err"], "lrrrrrrlr", rows)
    lines += ["", "Where the MACs are (folded bundled model, PyTorch FLOP counter, MACs = FLOPs / 2):", "",
              "| part | GMACs | share |", "|---|---:|---:|"]
    for k, v in m["parts"].items():
        lines.append(f"| {k} | {v / 1e9:.3f} | {100 * v / total:.1f}% |")
    lines.append(f"| total | {total / 1e9:.3f} | 100% |")
    by_stage = ", ".join(f"stage {s + 1}: {v / 1e9:.3f}" for s, v in m["touchable_by_stage"].items())
    lines += ["", (f"Early exit at {res['point']} can remove at most **{m['touchable'] / 1e9:.3f} GMACs = "
                   f"{100 * m['touchable'] / total:.1f}%** of the model's MACs (every token but one per pruned grid "
                   f"exited; by stage: {by_stage}); the aux head adds {m['aux_head'] / 1e6:.1f} MMACs. The rest "
                   "(the blocks before the exit point, "
                   "patch embeddings, spatial-reduction convs and key/value projections on the whole grid, depth-wise "
                   "convs, decoder) runs for every pixel.")]
    ceiling = [r for r in res["rows"] if r["mode"] == "ceiling"]
    if ceiling:
        lines += ["", (f"The ceiling row is not a usable model: the blocks after {res['point']} are removed "
                       f"altogether, so its {ceiling[0]['speedup']:.2f}x bounds what any early exit at this point "
                       "can gain on this machine.")]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    plt = pyplot()
    thr = [r for r in res["rows"] if r["mode"] == "threshold" and r["exited"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0, 100, 26)
    for r in thr:
        axes[0].hist(100 * np.asarray(r["exited"]), bins=bins, alpha=0.55, label=r["name"])
        axes[1].hist(r["gmacs_per_image"], bins=20, alpha=0.55, label=r["name"])
    base = res["rows"][0]["gmacs"]
    axes[1].axvline(base, color="k", ls="--", lw=1, label="bundled (folded)")
    axes[0].set_xlabel(f"tokens exited at {res['point']} (% of the 1/{4 * 2 ** res['exit_stage']} grid)")
    axes[1].set_xlabel("GMACs per image")
    for ax in axes:
        ax.set_ylabel(f"CamVid val images (of {res['images']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Early exit: compute per image across CamVid val ({res['size'][0]}x{res['size'][1]})")
    save_figure(fig, path)


def load_text() -> str:
    return " ".join(f"{v:.1f}" for v in load_average() or [])


def main(argv=None) -> dict:
    import onnxruntime
    import torch

    from segrt.export.loading import load_model
    from segrt.export.methods.early_exit.model import load_heads, make_heads
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.preprocess import frames_to_input
    from segrt.runtime.progress import make_progress

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = load_text()
    loaded = load_model(args.model)
    if args.quick:
        torch.manual_seed(3)
        heads = make_heads(loaded.model, [args.point])
    else:
        heads, _ = load_heads(args.heads, loaded.model)
    dataset = open_dataset(str(args.data), "camvid", "val")
    macs = mac_breakdown(loaded.model, heads, args.point, args.dwconv, args.size)
    stage = macs["exit_stage"]
    with tempfile.TemporaryDirectory() as tmp, make_progress() as progress:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows, configs = export_rows(args, loaded, heads, folder, progress)
        engines = mb.open_engines(rows, args.threads)
        n_lat = min(args.latency_images, len(dataset))
        inputs = [frames_to_input([dataset.read_image(i * len(dataset) // n_lat)], args.size, loaded.metadata.mean,
                                  loaded.metadata.std) for i in range(n_lat)]
        conditions = mb.time_rows(rows, engines, inputs, args, progress)
        for r in rows:
            if r.mode == "ceiling":
                continue
            mb.evaluate_row(r, engines[r.name], dataset, args.limit)
            if r.mode == "threshold":
                token_stats(r, dataset, args.limit, loaded.metadata, args.size, macs, progress, args.threads)
        mb.close_engines(engines)
    heads_label = "random (quick)" if args.quick else str(
        args.heads.relative_to(REPO) if args.heads.is_relative_to(REPO) else args.heads)
    res = {"model": args.model, "heads": heads_label, "point": args.point, "exit_stage": stage, "dwconv": args.dwconv,
           "context": args.context, "size": list(args.size), "threads": args.threads, "rounds": args.rounds,
           "latency_images": n_lat, "images": min(args.limit or len(dataset), len(dataset)),
           "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
           "load_start": load_start, "load_end": load_text(),
           "conditions": conditions.to_dict(), "macs": macs, "rows": []}
    for r, d in zip(rows, mb.row_dicts(rows)):
        cfg = configs[r.name]
        d["fixed_exited"] = None
        if r.mode == "budget":  # the budget keeps round(ratio * N) tokens of every pruned grid
            from segrt.export.methods.early_exit.model import budget

            kept = [budget(n, cfg.keep_ratio) for n in macs["grid_tokens"][stage:]]
            d["fixed_exited"] = 1.0 - kept[0] / macs["grid_tokens"][stage]
            d["gmacs_formula"] = macs_for_counts(macs, kept) / 1e9  # cross-check of the graph count
        res["rows"].append(d)
    return mb.finish(args, res, markdown, plot)


if __name__ == "__main__":
    main()
