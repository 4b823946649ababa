"""Where a model's time goes against the machine's roofline: compute-bound kernels vs memory-bound ones.

ONNX Runtime's profiler (:mod:`segrt.measure.profile`) gives the time and the bytes (inputs, weights,
outputs) of every executed kernel. Kernels are split in two classes by operator type:

- ``compute``: the kernels that do the multiply-accumulates :mod:`segrt.export.passes.macs` counts (Conv,
  MatMul, Gemm and their fused and integer forms). Every counted MAC runs in one of them, so the model's
  MACs over the compute class's time is its attained GMAC/s there, held against the measured peak
  (:mod:`segrt.measure.peak`) of the model's precision, or the roof ``intensity x bandwidth`` where the
  class's arithmetic intensity (MACs per byte it touched) is below the ridge.
- ``memory``: everything else (LayerNormalization, SkipLayerNormalization, Softmax, Resize, element-wise
  ops and activations, Transpose, Reshape/Gather/Concat/Slice, ReorderInput/Output, Q/DQ conversions):
  no MACs, so their bytes over their time is an attained GB/s, held against the measured bandwidth.

Depth-wise convolutions run as Conv and so count as compute, although they are memory-bound in practice:
a compute class far below its roof is the hint. Bytes are what the kernels read and wrote as the profiler
reports them, not DRAM traffic (much of it hits the caches), so a memory-class share above 100% of the
streamed bandwidth means cache-resident work, not an error.
"""

from __future__ import annotations

from pathlib import Path

from segrt.measure.profile import KernelProfile

COMPUTE_OPS = frozenset({
    "Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "ConvInteger", "QLinearConv", "ConvTranspose",
    "MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul",
    "MatMulNBits", "Gemm", "FusedGemm", "QGemm", "Attention", "QAttention", "MultiHeadAttention",
})
CLASSES = ("compute", "memory")


def op_class(op_type: str) -> str:
    return "compute" if op_type in COMPUTE_OPS else "memory"


def _rate(amount: float, ms: float) -> float | None:
    return amount / (ms / 1000.0) if ms > 0 and amount > 0 else None


def op_class_split(profile: KernelProfile, macs: int | None, precision: str, peaks: dict[str, float],
                   bandwidth_gbs: float | None) -> dict:
    """Time share, attained and attainable throughput of the compute and memory classes of one model.

    ``macs``: the model's MACs at the profiled size (``count_macs``); ``peaks``: GMAC/s per precision;
    ``bandwidth_gbs``: the measured memory bandwidth. Shares are of the profiled kernel time (they sum to 1).
    """
    total = sum(o.ms_per_run for o in profile.op_types)
    peak_kind = "int8" if precision == "int8" else "fp32"
    peak = peaks.get(peak_kind)
    out: dict = {"model": profile.model, "precision": precision, "peak_kind": peak_kind,
                 "kernel_ms_per_run": total, "macs": macs, "peak_gmacs_per_s": peak, "bandwidth_gbs": bandwidth_gbs}
    for cls in CLASSES:
        ops = [o for o in profile.op_types if op_class(o.op_type) == cls]
        ms = sum(o.ms_per_run for o in ops)
        nbytes = sum(o.bytes_per_run for o in ops)
        gbs = _rate(nbytes, ms)
        entry = {"ms_per_run": ms, "share": ms / total if total > 0 else 0.0, "bytes_per_run": nbytes,
                 "gbs": gbs / 1e9 if gbs else None,
                 "op_types": sorted((o.op_type for o in ops), key=lambda t: -next(o.ms_per_run for o in ops
                                                                                   if o.op_type == t))}
        if cls == "compute":
            rate = _rate(float(macs or 0), ms)
            intensity = macs / nbytes if macs and nbytes else None
            attainable = peak
            if peak and intensity and bandwidth_gbs:
                attainable = min(peak, intensity * bandwidth_gbs)
            entry.update({"gmacs_per_s": rate / 1e9 if rate else None, "intensity_macs_per_byte": intensity,
                          "attainable_gmacs_per_s": attainable,
                          "pct_of_peak": 100.0 * rate / 1e9 / peak if rate and peak else None,
                          "pct_of_attainable": 100.0 * rate / 1e9 / attainable if rate and attainable else None})
        else:
            entry["pct_of_bandwidth"] = 100.0 * gbs / 1e9 / bandwidth_gbs if gbs and bandwidth_gbs else None
        out[cls] = entry
    all_bytes = out["compute"]["bytes_per_run"] + out["memory"]["bytes_per_run"]
    rate = _rate(float(macs or 0), total)
    out["model_gmacs_per_s"] = rate / 1e9 if rate else None
    out["model_intensity_macs_per_byte"] = macs / all_bytes if macs and all_bytes else None
    return out


def summary_line(name: str, split: dict) -> str:
    c, m = split["compute"], split["memory"]

    def f(v, spec=".0f"):
        return "-" if v is None else format(v, spec)

    return (f"{name}: compute {c['share']:.0%} of kernel time at {f(c['gmacs_per_s'], '.1f')} GMAC/s "
            f"({f(c['pct_of_peak'])}% of the {split['peak_kind']} peak, {f(c['pct_of_attainable'])}% of attainable), "
            f"memory {m['share']:.0%} at {f(m['gbs'], '.1f')} GB/s ({f(m['pct_of_bandwidth'])}% of bandwidth)")


MAX_ANNOTATED = 6  # models labelled beside their dot; more get a legend


def plot_roofline(splits: dict[str, dict], peaks: dict[str, float], bandwidth_gbs: float | None, path: Path) -> bool:
    """Left: the roofline (log-log; GMAC/s against MACs per byte) with each model's compute class (dot) and
    whole model (cross). Right: per model, the time share of each class and how close each is to its roof.
    Returns False where matplotlib is missing (nothing written)."""
    from segrt.measure.report import annotate_points, pyplot, save_figure
    from segrt.runtime import sinks

    plt = pyplot()
    if plt is None:
        return False
    import numpy as np

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    points = [(n, s["compute"]["intensity_macs_per_byte"], s["compute"]["gmacs_per_s"]) for n, s in splits.items()]
    xs = [p[1] for p in points if p[1]] + [s["model_intensity_macs_per_byte"] for s in splits.values()
                                          if s["model_intensity_macs_per_byte"]]
    lo, hi = (min(xs) / 4, max(xs) * 4) if xs else (0.1, 1000.0)
    grid = np.geomspace(min(lo, 0.1), max(hi, 1000.0), 200)
    roofs = []
    for kind, peak in sorted(peaks.items()):
        roof = np.minimum(peak, grid * bandwidth_gbs) if bandwidth_gbs else np.full_like(grid, peak)
        roofs += ax.plot(grid, roof, label=f"{kind} roof: {peak:.0f} GMAC/s" + (f", {bandwidth_gbs:.0f} GB/s" if
                                                                                 bandwidth_gbs else ""))
    labelled, dots = [], []
    markers = "osD^vP*X<>hp"  # colours repeat after ten models: the marker tells them apart in the legend
    for i, (name, split) in enumerate(splits.items()):
        c = split["compute"]
        color = None
        if c["intensity_macs_per_byte"] and c["gmacs_per_s"]:
            dot = ax.scatter([c["intensity_macs_per_byte"]], [c["gmacs_per_s"]], zorder=3, label=name,
                             marker=markers[(i // 10) % len(markers)])
            color = dot.get_facecolor()[0]
            labelled.append((name, c["intensity_macs_per_byte"], c["gmacs_per_s"]))
            dots.append(dot)
        if split["model_intensity_macs_per_byte"] and split["model_gmacs_per_s"]:
            ax.scatter([split["model_intensity_macs_per_byte"]], [split["model_gmacs_per_s"]], marker="x",
                       color=color if color is not None else "gray", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MACs per byte the kernels touched)")
    ax.set_ylabel("GMAC/s")
    ax.set_title("roofline: dots = compute-class kernels, crosses = whole model")
    if len(labelled) <= MAX_ANNOTATED:
        annotate_points(ax, labelled, dy=0.0)
        ax.legend(handles=roofs, fontsize=8, loc="lower right")
    else:  # beside each other the names overlap: a legend names the dots (the crosses share their colour)
        ax.add_artist(ax.legend(handles=roofs, fontsize=8, loc="lower right"))
        ax.legend(handles=dots, fontsize=6, loc="upper left", ncol=2, frameon=False)
    names = list(splits)
    y = np.arange(len(names))
    comp = [splits[n]["compute"]["share"] * 100 for n in names]
    mem = [splits[n]["memory"]["share"] * 100 for n in names]
    bx.barh(y, comp, label="compute-bound kernels (Conv/MatMul/Gemm)")
    bx.barh(y, mem, left=comp, label="memory-bound kernels (norms, softmax, resize, element-wise, moves)")
    for i, n in enumerate(names):
        c, m = splits[n]["compute"], splits[n]["memory"]
        pc = "-" if c["pct_of_attainable"] is None else f"{c['pct_of_attainable']:.0f}%"
        pm = "-" if m["pct_of_bandwidth"] is None else f"{m['pct_of_bandwidth']:.0f}%"
        bx.text(1, i, f"{pc} of roof", va="center", fontsize=8, color="white")
        bx.text(comp[i] + 1, i, f"{pm} of GB/s", va="center", fontsize=8, color="white")
    bx.set_yticks(y)
    bx.set_yticklabels(names, fontsize=8)
    bx.set_xlim(0, 100)
    bx.set_xlabel("% of profiled kernel time")
    bx.set_title("time share per class, attained share of its roof")
    bx.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    with sinks.writing(Path(path), "plot"):
        save_figure(fig, Path(path))
    return True


def profile_roofline(group: dict, profiles: dict[str, KernelProfile]) -> dict[str, dict]:
    """The split of every profiled model of one ``benchmark_size`` group, with the group's peaks and MACs."""
    results = {r["name"]: r for r in group["results"]}
    peaks = group.get("peaks_gmacs_per_s", {})
    bandwidth = group.get("bandwidth_gbs")
    return {name: op_class_split(prof, results[name].get("macs"), results[name]["precision"], peaks, bandwidth)
            for name, prof in profiles.items() if name in results}
