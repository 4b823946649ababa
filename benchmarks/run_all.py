"""The headline table: segrt's tiers against what users would run instead, on this machine, in one run.

    make bench                                  # = python benchmarks/run_all.py (bundled camvid-b0, 512x512)
    python benchmarks/run_all.py --quick        # smoke run on a random model; numbers are meaningless

Steps, all at one input size (default 512x512):

1. export segrt's tiers from the checkpoint: FP32 (verified export, folded decoder), INT8 (the CPU form of
   :mod:`segrt.export.passes.quantize_cpu`, calibrated on CamVid train), and, when
   ``segrt.export.methods.merging.model`` is installed, token-merging tiers in FP32 and INT8; then every
   bundled student (pruned + distilled) alone, merged, and both in INT8. Tiers that shrink the image the
   network sees (``merge-downsample``) are marked and do not count toward the goals;
2. build the peers from the same weights: transformers ``SegformerForSemanticSegmentation`` in eager
   PyTorch, and its plain ``torch.onnx.export`` run by ONNX Runtime with default session options;
3. sweep the machine's peaks (large GEMMs fp32/int8, array streams: :func:`segrt.measure.peak.measure_peaks`),
   then time everything interleaved (``segrt.measure.bench``), with peak-throughput probes in the same run;
4. CamVid val mIoU of every candidate through the very pipeline that was timed;
5. ONNX Runtime's profiler on the ONNX candidates: which kernels ran (QLinearConv, QLinearMatMul on
   uint8 ...), where the time goes, and each tier against the roofline (:mod:`segrt.measure.roofline`:
   compute-class GMAC/s against the attainable peak, memory-class GB/s against the measured bandwidth);
6. write ``headline.json``, ``headline.md``, ``pareto.png``, ``stages.png`` and ``roofline.png`` (to
   ``benchmarks/results/``; ``--quick`` writes to ``out/bench-quick/``) and, for full runs, the
   headline table into README.md between its ``bench:headline`` markers.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrt.measure.harness import default_threads, load_average
from segrt.measure.method_bench import shared_data
from segrt.measure.report import annotate_points, fmt, pyplot, save_figure, table, write_report

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = shared_data(REPO)
README_START, README_END = "<!-- bench:headline:start -->", "<!-- bench:headline:end -->"
EAGER, PLAIN = "transformers (eager PyTorch)", "transformers -> ONNX Runtime"
GOALS = {"vs_eager": 12.0, "vs_plain_ort": 4.0, "miou_points": 1.0, "int8_vs_fp32": 1.3}
REDUCED_MARK = " †"


# Token-merging strategies that shrink the image the network sees: they are listed, labelled, and never
# counted toward a speed goal (Segformer++ reports downsampling as the baseline its merging beats).
RESOLUTION_REDUCING = frozenset({"downsample"})


@dataclass
class Tier:
    name: str
    path: Path
    precision: str
    merge: str

    @property
    def reduces_resolution(self) -> bool:
        return self.merge in RESOLUTION_REDUCING


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None,
                   help="checkpoint or bundled name (default camvid-b0; --quick: random:b0:11)")
    p.add_argument("--size", default=None, help="input size HxW (default 512x512; --quick 256x320)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CamVid root (train for calibration, val for mIoU)")
    p.add_argument("--merges", nargs="*", default=None, help="token-merging presets to include "
                   "(default: fast downsample; the two fastest in benchmarks/results/merging.md)")
    p.add_argument("--students", nargs="*", default=None,
                   help="smaller models (pruned + distilled) to add in FP32 "
                   "(default: every bundled MODEL-p*; --quick none)")
    p.add_argument("--student-merge", default="fast",
                   help="token merging also applied to each student ('none' to skip)")
    p.add_argument("--student-int8", action=argparse.BooleanOptionalAction, default=True,
                   help="INT8 tiers of every student (plain and merged) as well")
    p.add_argument("--peak", action=argparse.BooleanOptionalAction, default=None,
                   help="sweep the machine's peaks before timing (default: on; --quick: a small sweep)")
    p.add_argument("--calib-count", type=int, default=None, help="INT8 calibration images (default 64; --quick 4)")
    p.add_argument("--runs", type=int, default=None,
                   help="timed interleaved runs per candidate (default 30; --quick 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-limit", type=int, default=None, help="first N val images (default all 101; --quick 4)")
    p.add_argument("--threads", type=int, default=None, help="threads for every candidate (default: all CPUs)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results; --quick out/bench-quick)")
    p.add_argument("--work", type=Path, default=REPO / "out" / "bench-work", help="exported models go here")
    p.add_argument("--quick", action="store_true", help="random model, small size, few runs and images: a smoke run")
    p.add_argument("--no-readme", action="store_true", help="do not write the table into README.md")
    args = p.parse_args(argv)
    q = args.quick
    args.model = args.model or ("random:b0:11" if q else "camvid-b0")
    args.size = args.size or ("256x320" if q else "512x512")
    args.merges = args.merges if args.merges is not None else ["fast", "downsample"]
    args.students = args.students if args.students is not None else ([] if q else default_students(args.model))
    args.calib_count = args.calib_count or (4 if q else 64)
    args.runs = args.runs or (3 if q else 30)
    args.eval_limit = args.eval_limit if args.eval_limit is not None else (4 if q else None)
    args.threads = args.threads or default_threads()
    args.out = args.out or (REPO / "out" / "bench-quick" if q else RESULTS)
    args.peak = True if args.peak is None else args.peak
    return args


def check_model(spec: str) -> None:
    if spec.startswith("random:") or Path(spec).exists():
        return
    from segrt.runtime.models import models_dir

    if not (models_dir() / f"{spec}.safetensors").exists():
        raise SystemExit(f"{spec}: no checkpoint {models_dir() / (spec + '.safetensors')}. The bundled CamVid model "
                         "ships with the repository; for a smoke run without it use --quick.")


# ----------------------------------------------------------------------------- 1. segrt's tiers


def merging_available() -> bool:
    try:
        import segrt.export.methods.merging.model  # noqa: F401
    except ImportError:
        return False
    return True


def default_students(model: str) -> list[str]:
    """Every bundled smaller version of ``model`` (``models/<model>-p*.safetensors``: pruned + distilled)."""
    from segrt.runtime.models import models_dir

    return sorted(p.stem for p in models_dir().glob(f"{model}-p*.safetensors"))


def export_tiers(spec: str, size: tuple[int, int], args, work: Path, progress) -> list[Tier]:
    """segrt's tiers of the model itself (FP32 and INT8, plain and merged), then each student plain and with
    ``--student-merge``, in FP32 and (``--student-int8``) INT8: the combinations are where the speed-ups add up."""
    merges = ["none"] + (list(args.merges) if merging_available() else [])
    student_merges = ["none"] + ([args.student_merge] if merging_available() and args.student_merge != "none" else [])
    plan = [(spec, "segrt", merge, True) for merge in merges]
    plan += [(student, f"segrt {student.removeprefix(spec + '-')}", merge, args.student_int8)
             for student in args.students for merge in student_merges]
    task = progress.add_task("export tiers", total=sum(2 if int8 else 1 for *_, int8 in plan), info="")
    tiers = []
    for source, prefix, merge, int8 in plan:
        tiers += export_tier(source, prefix, merge, int8, size, args, work, progress, task)
    return tiers


def export_tier(source: str, prefix: str, merge: str, int8: bool, size: tuple[int, int], args, work: Path,
                progress, task) -> list[Tier]:
    from segrt.export.loading import load_model
    from segrt.export.onnx_export import export_onnx
    from segrt.export.passes.quantize_cpu import quantize_int8_cpu

    loaded = load_model(source)
    model, label = loaded.model, prefix
    if merge != "none":
        from segrt.export.methods.merging.model import apply_merging, describe, merge_config

        config = merge_config(merge)
        loaded.metadata.extra["token_merge"] = describe(config)
        model, label = apply_merging(loaded.model, config), f"{prefix} merge-{merge}"
    fp32 = work / f"{label.replace(' ', '_')}_fp32.onnx"
    progress.update(task, info=f"{label} fp32")
    export_onnx(model, loaded.metadata, fp32, size=size)
    tiers = [Tier(f"{label} FP32", fp32, "fp32", merge)]
    progress.advance(task)
    if int8:
        progress.update(task, info=f"{label} int8")
        path = work / f"{label.replace(' ', '_')}_int8.onnx"
        quantize_int8_cpu(fp32, path, args.data / "train", args.calib_count, show_progress=False)
        tiers.append(Tier(f"{label} INT8", path, "int8", merge))
        progress.advance(task)
    return tiers


# ----------------------------------------------------------------------------- 2-4. bench and accuracy


def candidates_for(spec: str, tiers: list[Tier], args, work: Path, frame: np.ndarray) -> list:
    from segrt.export.passes.macs import count_macs
    from segrt.measure.bench import segrt_candidate
    from segrt.measure.peers import plain_onnx_candidate, transformers_candidate

    cands = [transformers_candidate(spec, args.threads, name=EAGER, check_frames=[frame]),
             plain_onnx_candidate(spec, args.threads, work, name=PLAIN)]
    for tier in tiers:
        cands.append(segrt_candidate(tier.path, name=tier.name, threads=args.threads,
                                     macs=lambda size, p=tier.path: count_macs(p, (1, 3, *size)).total))
    return cands


def evaluate_candidates(cands: list, size: tuple[int, int], args, progress) -> dict[str, dict]:
    """mIoU through the timed pipeline (the same preprocessing, network and postprocessing)."""
    from segrt.measure.bench import pipeline_predictor
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.evaluate import evaluate

    dataset = open_dataset(args.data, "camvid", "val")
    out = {}
    for cand in cands:
        if cand.prepare is not None:
            cand.prepare(size)
        runner = cand.load(size)
        metrics = evaluate(pipeline_predictor(cand, runner, size), dataset, limit=args.eval_limit,
                           show_progress=False, description=cand.name)
        runner.close()
        out[cand.name] = metrics.to_dict()
        progress.console.print(f"  {cand.name}: mIoU {100 * metrics.miou:.2f} on {metrics.images} val images")
    return out


# ----------------------------------------------------------------------------- 5-6. report


def headline_rows(group: dict, accuracy: dict[str, dict], tiers: list[Tier] = (),
                  roofline: dict[str, dict] | None = None) -> list[dict]:
    by_name = {r["name"]: r for r in group["results"]}
    eager, plain = by_name.get(EAGER), by_name.get(PLAIN)
    reducing = {t.name for t in tiers if t.reduces_resolution}
    roofline = roofline or {}
    rows = []
    for r in group["results"]:
        miou = accuracy.get(r["name"], {}).get("miou")
        split = roofline.get(r["name"])
        fp32_twin = by_name.get(r["name"].replace(" INT8", " FP32")) if r["name"].endswith(" INT8") else None
        rows.append({
            "name": r["name"], "runtime": r["info"].get("backend", r["kind"]), "precision": r["precision"],
            "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "e2e_p50_ms": r["end_to_end_ms"]["p50"],
            "fps": r["throughput_fps"], "miou": miou,
            "delta_miou_points": (100 * (miou - accuracy[EAGER]["miou"])
                                  if miou is not None and EAGER in accuracy else None),
            "vs_eager": eager["latency_ms"]["p50"] / r["latency_ms"]["p50"] if eager else None,
            "vs_plain_ort": plain["latency_ms"]["p50"] / r["latency_ms"]["p50"] if plain else None,
            "gmacs": r["gmacs"], "gmacs_per_s": r["gmacs_per_s"], "pct_of_peak": r["pct_of_peak"],
            "peak_kind": r["peak_kind"], "peak_mb": r["memory_mb"]["peak"],
            "reduces_resolution": r["name"] in reducing,
            "int8_vs_fp32": fp32_twin["latency_ms"]["p50"] / r["latency_ms"]["p50"] if fp32_twin else None,
            "compute_share": split["compute"]["share"] if split else None,
            "compute_pct_of_roof": split["compute"]["pct_of_attainable"] if split else None,
            "memory_pct_of_bandwidth": split["memory"]["pct_of_bandwidth"] if split else None,
        })
    return rows


def goals(rows: list[dict]) -> dict:
    """segrt's fastest tier within 1 mIoU point of eager transformers that keeps the full resolution, against
    the two goals; and every INT8 tier against the FP32 tier of the same graph."""
    int8 = {r["name"]: r["int8_vs_fp32"] for r in rows if r.get("int8_vs_fp32") is not None}
    int8_best = max(int8.values(), default=None)
    int8_goal = {"int8_vs_fp32": int8, "int8_target": GOALS["int8_vs_fp32"],
                 "met_int8": int8_best is not None and int8_best >= GOALS["int8_vs_fp32"]}
    eligible = [r for r in rows if r["name"].startswith("segrt") and r["delta_miou_points"] is not None
                and r["delta_miou_points"] >= -GOALS["miou_points"] and not r.get("reduces_resolution")]
    if not eligible:
        return {"best": None, "met": False, **int8_goal,
                "note": "no full-resolution segrt tier within 1 mIoU point of eager transformers"}
    best = min(eligible, key=lambda r: r["p50_ms"])
    met_eager = best["vs_eager"] is not None and best["vs_eager"] >= GOALS["vs_eager"]
    met_plain = best["vs_plain_ort"] is not None and best["vs_plain_ort"] >= GOALS["vs_plain_ort"]
    return {"best": best["name"], "vs_eager": best["vs_eager"], "vs_plain_ort": best["vs_plain_ort"],
            "delta_miou_points": best["delta_miou_points"], "met_vs_eager": met_eager, "met_vs_plain_ort": met_plain,
            "met": met_eager and met_plain, "targets": GOALS, **int8_goal}


def markdown(report: dict) -> str:
    env, s = report["environment"], report["settings"]
    cpu = env["cpu"]
    g = report["goals"]
    lines = [
        (f"**{s['model']}, {s['size'][0]}x{s['size'][1]}, batch 1, {s['threads']} threads** on {cpu.get('model', '?')} "
         f"({', '.join(cpu.get('extensions', []))}); ONNX Runtime {env['onnxruntime']}, "
         f"PyTorch {env.get('torch', '-')}, "
         f"transformers {env.get('transformers', '-')}. Network latency over {s['runs']} interleaved runs; "
         f"mIoU on CamVid val ({report['eval_images']} images) through the same pipeline."),
        "",
    ]
    header = ["model", "runtime", "precision", "p50 ms", "p95 ms", "end-to-end p50 ms", "FPS", "vs eager",
              "vs plain ORT", "mIoU", "ΔmIoU", "GMAC", "GMAC/s", "% of peak", "compute % of time",
              "compute % of roof", "memory % of bandwidth", "peak MB"]
    rows = [[r["name"] + (REDUCED_MARK if r.get("reduces_resolution") else ""), r["runtime"], r["precision"],
             f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
             f"{r['e2e_p50_ms']:.1f}", f"{r['fps']:.1f}", f"{fmt(r['vs_eager'], '.2f')}x",
             f"{fmt(r['vs_plain_ort'], '.2f')}x", fmt(None if r["miou"] is None else 100 * r["miou"], ".2f"),
             fmt(r["delta_miou_points"], "+.2f"), fmt(r["gmacs"], ".2f"), fmt(r["gmacs_per_s"]),
             f"{fmt(r['pct_of_peak'])} ({r['peak_kind']})",
             fmt(None if r.get("compute_share") is None else 100 * r["compute_share"], ".0f"),
             fmt(r.get("compute_pct_of_roof"), ".0f"), fmt(r.get("memory_pct_of_bandwidth"), ".0f"),
             fmt(r["peak_mb"], ".0f")] for r in report["rows"]]
    lines += table(header, "lll" + "r" * 15, rows)
    peaks = report["group"]["peaks_gmacs_per_s"]
    probes = "; ".join(f"{p['name']} {p['gmacs_per_s']:.0f} GMAC/s" for p in report["group"]["probes"])
    sweep = report["group"].get("peak_calibration") or {}
    bw = report["group"].get("bandwidth_gbs")
    lines += ["", ("Machine peaks, measured in the same run: "
                   + (f"a sweep of large GEMMs ({', '.join(str(n) for n in sorted({g['n'] for g in sweep['gemm']}))}, "
                      f"best of {sweep['repeats']}) and array streams before the timing, "
                      if sweep.get("gemm") else "")
                   + f"and probes in between the models ({probes}). "
                   f"% of peak is against the fp32 peak ({fmt(peaks.get('fp32'), '.0f')} GMAC/s) for float models "
                   "and the "
                   f"int8 peak ({fmt(peaks.get('int8'), '.0f')} GMAC/s) for INT8 ones"
                   + (f"; memory bandwidth {bw:.1f} GB/s" if bw else "") + ". "
                   "Roofline columns (ONNX Runtime profiler, `segrt.measure.roofline`): the share of kernel time in "
                   "compute-class kernels (Conv, MatMul, Gemm and their fused and integer forms), their attained "
                   "GMAC/s as % of the attainable roof (the peak, or intensity x bandwidth below the ridge), and the "
                   "memory-class kernels' GB/s as % of the measured bandwidth (bytes the kernels touched, much of "
                   "it in cache, so above 100% is possible). INT8 tiers are held against the int8 peak although "
                   "their attention MatMuls, most convolutions and the classifier stay float, so their compute "
                   "share of the roof reads low. Plot: roofline.png.")]
    if any(r.get("reduces_resolution") for r in report["rows"]):
        lines += ["", (f"{REDUCED_MARK.strip()} feeds the network a smaller image (Segformer++'s downsampling "
                       "baseline): listed for comparison, not counted toward the goals.")]
    if g.get("best"):
        lines += ["", (f"Goals (fastest segrt tier within {GOALS['miou_points']:g} mIoU point of eager transformers): "
                       f"**{g['best']}** is {g['vs_eager']:.1f}x faster than eager transformers "
                       f"(goal {GOALS['vs_eager']:g}x: {'met' if g['met_vs_eager'] else 'not met'}) and "
                       f"{g['vs_plain_ort']:.1f}x faster than the plain ONNX Runtime export "
                       f"(goal {GOALS['vs_plain_ort']:g}x: {'met' if g['met_vs_plain_ort'] else 'not met'}), "
                       f"ΔmIoU {g['delta_miou_points']:+.2f} points.")]
    else:
        lines += ["", f"Goals: {g.get('note')}."]
    if g.get("int8_vs_fp32"):
        ratios = ", ".join(f"{k.removesuffix(' INT8')} {v:.2f}x" for k, v in g["int8_vs_fp32"].items())
        lines += ["", (f"INT8 against FP32 of the same graph (goal {GOALS['int8_vs_fp32']:g}x: "
                       f"{'met' if g['met_int8'] else 'not met'}): {ratios}.")]
    kern = report.get("kernels", {})
    int8 = next((v for k, v in kern.items() if "INT8" in k), None)
    if int8:
        types = sorted({t for o in int8["op_types"] for t in o["input_types"] if o["op_type"].startswith("QLinear")})
        lines += ["", f"INT8 kernels ONNX Runtime ran (profiler): {', '.join(int8['integer_kernels'])} "
                  f"(input types: {', '.join(types)}). "
                  + report.get("int8_dispatch", "")]
    load = [s.get("load_average_at_start"), env.get("load_average")]
    if all(load):
        lines += ["", (f"1-minute load average {load[0][0]:.1f} at the start and {load[1][0]:.1f} at the end on "
                       f"{len(cpu.get('affinity', [])) or cpu.get('logical_cpus')} CPUs: other work shared the machine "
                       "unless these are near 0; interleaving spreads it over all candidates, but eager PyTorch's "
                       "OpenMP threads suffer most from oversubscription.")]
    lines += ["", f"Command: `{s['command']}` ({report['wall_s'] / 60:.1f} min)."]
    return "\n".join(lines) + "\n"


def peak_sweep(args, progress) -> dict:
    """The machine's peaks before the timing (large GEMMs per precision, array streams); --quick sweeps small
    sizes once, which checks the plumbing, not the machine."""
    from segrt.measure.peak import GEMM_SIZES, STREAM_MB, measure_peaks

    sizes, stream_mb, repeats = ((256,), (4,), 1) if args.quick else (GEMM_SIZES, STREAM_MB, 3)
    task = progress.add_task("peak sweep", total=None, info="")
    result = measure_peaks(args.threads, sizes, stream_mb, repeats,
                           progress=lambda what: progress.update(task, info=what))
    progress.update(task, total=1, completed=1, info="done")
    return result


def int8_dispatch_note(group: dict) -> str:
    """Which MLAS int8 GEMM path the u8 x s8 probe shows: AVX-512 VNNI does at most 4 int8 MACs per
    fp32 FMA lane-cycle; a larger ratio means the AMX tile kernels are running."""
    by = {p["precision"]: p["gmacs_per_s"] for p in group["probes"]}
    fp32 = max((p["gmacs_per_s"] for p in group["probes"] if p["precision"] == "fp32"), default=None)
    if not fp32 or "int8" not in by:
        return ""
    ratio = by["int8"] / fp32
    engine = "AMX tile kernels (beyond the 4x AVX-512 VNNI can give)" if ratio > 4.5 else "AVX-512 VNNI / AVX2 kernels"
    return f"The u8 x s8 GEMM probe runs {ratio:.1f}x the fp32 peak: MLAS is using its {engine}."


def plots(report: dict, out: Path) -> list[Path]:
    """``pareto.png`` (latency vs mIoU) and ``stages.png`` (pipeline stages, kernel time by operator type)."""
    plt = pyplot()
    if plt is None:
        return []
    rows = [r for r in report["rows"] if r["miou"] is not None]
    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        color = "tab:blue" if r["name"].startswith("segrt") else "tab:red"
        ax.scatter(r["p50_ms"], 100 * r["miou"], color=color, zorder=3)
    annotate_points(ax, [(r["name"], r["p50_ms"], 100 * r["miou"]) for r in rows])
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: r["p50_ms"]):
        if r["miou"] > best:
            front.append(r)
            best = r["miou"]
    ax.step([r["p50_ms"] for r in front], [100 * r["miou"] for r in front], where="post", color="grey", lw=1,
            label="Pareto front")
    eager = next((r for r in rows if r["name"] == EAGER), None)
    plain = next((r for r in rows if r["name"] == PLAIN), None)
    if eager:
        ax.axvline(eager["p50_ms"] / GOALS["vs_eager"], color="tab:red", ls="--", lw=0.8, label="goal: eager / 12")
    if plain:
        ax.axvline(plain["p50_ms"] / GOALS["vs_plain_ort"], color="tab:orange", ls="--", lw=0.8,
                   label="goal: plain ORT / 4")
    ax.set_xscale("log")
    ax.set_xlabel("network latency p50 (ms, log scale)")
    ax.set_ylabel("CamVid val mIoU (%)")
    s = report["settings"]
    ax.set_title(f"{s['model']} {s['size'][0]}x{s['size'][1]}, {s['threads']} threads: latency vs accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    written.append(out / "pareto.png")
    save_figure(fig, written[-1])

    results = report["group"]["results"]
    kern = report.get("kernels", {})
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    names = [r["name"] for r in results]
    left = np.zeros(len(results))
    for stage, color in zip(("preprocess", "network", "postprocess"), ("tab:gray", "tab:blue", "tab:green")):
        vals = np.array([r["stages_ms"][stage] for r in results])
        axes[0].barh(names, vals, left=left, color=color, label=stage)
        left += vals
    axes[0].invert_yaxis()
    axes[0].set_xlabel("ms per frame (p50 of each stage)")
    axes[0].set_title("frame pipeline stages")
    axes[0].legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    if kern:
        top: dict[str, float] = {}
        for prof in kern.values():
            for o in prof["op_types"]:
                top[o["op_type"]] = top.get(o["op_type"], 0.0) + o["ms_per_run"]
        keep = [k for k, _ in sorted(top.items(), key=lambda kv: -kv[1])[:9]]
        knames = list(kern)
        left = np.zeros(len(knames))
        cmap = plt.get_cmap("tab10")
        for i, op in enumerate([*keep, "other"]):
            vals = np.array([sum(o["ms_per_run"] for o in kern[k]["op_types"]
                                 if (o["op_type"] == op) or (op == "other" and o["op_type"] not in keep))
                             for k in knames])
            axes[1].barh(knames, vals, left=left, color=cmap(i % 10), label=op)
            left += vals
        axes[1].invert_yaxis()
        axes[1].set_xlabel("ms per run, ONNX Runtime profiler (kernel time by operator type)")
        axes[1].set_title("where the network time goes")
        axes[1].legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    written.append(out / "stages.png")
    save_figure(fig, written[-1])
    return written


def update_readme(table_md: str) -> bool:
    readme = REPO / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table_md}{README_END}{tail}")
    return True


def main(argv=None) -> dict:
    import cv2

    from segrt.commands._args import parse_size
    from segrt.measure.bench import benchmark_size, environment
    from segrt.measure.peak import default_probes
    from segrt.measure.profile import profile_group
    from segrt.measure.roofline import plot_roofline, profile_roofline
    from segrt.runtime.progress import make_progress

    started = time.perf_counter()
    load_at_start = load_average()
    args = parse_args(argv)
    for spec in [args.model, *args.students]:
        check_model(spec)
    size = parse_size(args.size)
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    val_images = sorted((args.data / "val").glob("*.png"))
    frame = cv2.imread(str(val_images[0]), cv2.IMREAD_COLOR) if val_images else None
    if frame is None:
        raise SystemExit(f"no CamVid val images under {args.data}")
    with make_progress() as progress:
        tiers = export_tiers(args.model, size, args, work, progress)
        cands = candidates_for(args.model, tiers, args, work, frame)
        calibration = peak_sweep(args, progress) if args.peak else None
        group = benchmark_size(cands, size, frame, runs=args.runs, warmup=args.warmup, threads=args.threads,
                               probes=default_probes(args.threads, (calibration or {}).get("best_size")),
                               progress=progress, calibration=calibration)
        for s in group["skipped"]:
            progress.console.print(f"[yellow]skipped[/] {s['name']}: {s['reason']}")
        progress.console.print("CamVid val mIoU through the timed pipelines:")
        measured = {r["name"] for r in group["results"]}
        accuracy = evaluate_candidates([c for c in cands if c.name in measured], size, args, progress)
        profiles = profile_group(cands, group, frame, args.threads)
        kernels = {name: prof.to_dict() for name, prof in profiles.items()}
    roofline = profile_roofline(group, profiles)
    rows = headline_rows(group, accuracy, tiers, roofline)
    command = "python benchmarks/run_all.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    report = {
        "environment": environment(args.threads),
        "settings": {"model": args.model, "size": list(size), "threads": args.threads, "runs": args.runs,
                     "warmup": args.warmup, "calibration_images": args.calib_count, "merges": args.merges,
                     "students": args.students, "student_merge": args.student_merge,
                     "quick": args.quick, "command": command.strip(), "load_average_at_start": load_at_start},
        "tiers": [{"name": t.name,
                   "path": str(t.path.relative_to(REPO) if t.path.is_relative_to(REPO) else t.path),
                   "precision": t.precision, "merge": t.merge} for t in tiers],
        "group": group, "accuracy": accuracy, "kernels": kernels, "roofline": roofline, "rows": rows,
        "goals": goals(rows),
        "eval_images": next(iter(accuracy.values()))["images"] if accuracy else 0,
        "int8_dispatch": int8_dispatch_note(group),
    }
    report["wall_s"] = time.perf_counter() - started
    table_md = markdown(report)
    written = write_report(args.out, "headline", report, "# segrt headline benchmark\n\n" + table_md)
    written += plots(report, args.out)
    if roofline and plot_roofline(roofline, group["peaks_gmacs_per_s"], group.get("bandwidth_gbs"),
                                  args.out / "roofline.png"):
        written.append(args.out / "roofline.png")
    print(table_md)
    print("wrote " + ", ".join(str(p) for p in written))
    if not args.quick and not args.no_readme and update_readme(table_md):
        print("updated the headline table in README.md")
    return report


if __name__ == "__main__":
    main()
