"""INT8 forms on ONNX Runtime's CPU provider (issue 20): which quantization form its kernels run fastest.

Every candidate is built from the same FP32 logits-form graph (camvid-b0, folded decoder, 512x512 by
default) and timed interleaved (segrt.measure.harness: A B C A B C ..., re-warmed, medians) at a fixed
intra-op thread count. At 1 thread ONNX Runtime computes on the calling thread, so that thread's CPU time is
recorded too: on a shared machine it leaves out the time the thread waited for a core, which wall-clock
medians do not. For each: median latency, ratio to FP32, label (argmax) agreement with FP32 on real
CamVid val frames, the kernels ONNX Runtime actually runs (its optimized graph), and for the finalists the
CamVid val mIoU through segrt's Engine. The winner's and the Q/DQ file's time per operator type come from
ONNX Runtime's profiler. Writes ``int8_forms.{json,md,png}`` under ``benchmarks/results/``. Usage::

    python benchmarks/int8_forms.py                   # exports camvid-b0 at 512x512, 1 thread
    python benchmarks/int8_forms.py --threads 2       # the headline thread count, on a quiet machine
    python benchmarks/int8_forms.py --model X.onnx    # any logits-form FP32 export with segrt metadata
    python benchmarks/int8_forms.py --quick           # a few candidates, few rounds: a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from segrt.export.passes import quantize as q
from segrt.export.passes.quantize_cpu import CPU_CONV_KINDS, conv_kinds, quantize_int8_cpu
from segrt.measure.harness import load_average, run_interleaved
from segrt.measure.report import fmt, pyplot, save_figure, table, write_report
from segrt.runtime.datasets import camvid
from segrt.runtime.evaluate import evaluate
from segrt.runtime.preprocess import frames_to_input

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FUSED = ("Gemm", "MatMul", "FusedMatMul", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
         "Conv", "QLinearConv", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Gelu", "Add",
         "SkipLayerNormalization", "Transpose", "ReorderInput", "ReorderOutput")
WINNER = "cpu"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="FP32 logits-form ONNX (default: export camvid-b0)")
    p.add_argument("--size", default="512x512", help="export size HxW when --model is not given")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid", help="CamVid root")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="timed interleaved rounds (default 20)")
    p.add_argument("--frames", type=int, default=None, help="CamVid val frames for label agreement (default 20)")
    p.add_argument("--calib-count", type=int, default=64, help="calibration images (CamVid train)")
    p.add_argument("--finalists", type=int, default=2,
                   help="fastest INT8 candidates evaluated for mIoU (besides FP32, Q/DQ and the cpu form)")
    p.add_argument("--min-agreement", type=float, default=0.99, help="mean agreement a finalist needs")
    p.add_argument("--work", type=Path, default=None, help="folder for the candidate models (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", type=Path, default=None, help="only rewrite the .md and .png from this JSON report")
    p.add_argument("--quick", action="store_true", help="5 candidates, 3 rounds, 4 frames, 8 calibration images, "
                                                        "mIoU on 10 images")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.frames = args.frames or (4 if args.quick else 20)
    if args.quick:
        args.calib_count, args.finalists = min(args.calib_count, 8), 1
    return args


# ----------------------------------------------------------------------------- candidates


class Builder:
    """Builds the candidate files from one FP32 graph; every static one is calibrated the same way."""

    def __init__(self, fp32: Path, work: Path, calib: Path, count: int):
        self.fp32, self.work, self.calib, self.count = fp32, work, calib, count
        self.proto = onnx.load(str(fp32))
        self.meta = q.require_metadata(self.proto, fp32)
        self.hw = self.meta.input_size

    def excluded(self, proto: onnx.ModelProto | None = None) -> list[str]:
        """What segrt keeps float in every form: LayerNorm, Softmax, attention MatMuls, classifier, upsampled convs."""
        p = proto or self.proto
        return ([n.name for n in p.graph.node if n.op_type in q.FLOAT_OP_TYPES] + q.output_heads(p)
                + q.upsampled_convs(p) + q.attention_matmuls(p))

    def reader(self):
        images = q.calibration_images(self.calib, self.count)
        name = self.proto.graph.input[0].name
        return q._calibration_reader(images, name, self.hw, self.meta)

    def static(self, out: Path, *, src: Path | None = None, ops=("Conv", "MatMul"), fmt: str = "qdq",
               act: str = "s8", per_channel: bool = True, extra: dict | None = None, dedicate: bool = True,
               exclude: list[str] | None = None, reduce_range: bool = False) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        proto = onnx.load(str(src or self.fp32))
        options = {"ActivationSymmetric": act == "s8", "WeightSymmetric": True, "QuantizeBias": False,
                   "DedicatedQDQPair": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0},
                   **(extra or {})}
        quant_format = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
        quantize_static(proto, out, self.reader(), quant_format=quant_format, op_types_to_quantize=list(ops),
                        per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=self.excluded(proto) + list(exclude or []), extra_options=options)
        if dedicate and fmt == "qdq":
            model = onnx.load(str(out))
            q.dedicate_activation_pairs(model)
            onnx.save(model, str(out))

    def dynamic(self, out: Path, *, src: Path | None = None, per_channel: bool = True, weights: str = "s8",
                reduce_range: bool = False, attention: bool = False) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        source = src or self.fp32
        proto = onnx.load(str(source))
        exclude = q.output_heads(proto) + ([] if attention else q.attention_matmuls(proto))
        weight_type = QuantType.QInt8 if weights == "s8" else QuantType.QUInt8
        quantize_dynamic(source, out, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=weight_type,
                         nodes_to_exclude=exclude, extra_options={"MatMulConstBOnly": not attention})

    def convs_then_dynamic(self, out: Path, kinds: set[str]) -> None:
        """Static Q/DQ for the convolutions of ``kinds``, dynamic weight MatMuls (the CPU form's recipe, any kinds)."""
        float_convs = [n for n, k in conv_kinds(self.proto).items() if k not in kinds]
        convs = out.with_name(out.stem + ".convs.onnx")
        self.static(convs, ops=("Conv",), exclude=float_convs)
        self.dynamic(out, src=convs)

    def pre_processed(self, optimize: bool) -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        path = self.work / f"fp32_pre_{'opt' if optimize else 'noopt'}.onnx"
        quant_pre_process(str(self.fp32), str(path), skip_optimization=not optimize)
        return path

    def static_matmul_integer_to_float(self, out: Path, src: Path, qdq: Path) -> None:
        """Weight MatMul (+ bias Add) -> QuantizeLinear (uint8, the Q/DQ file's calibrated scale, zero point 128)
        + com.microsoft.MatMulIntegerToFloat with the bias: static activations, contrib op in the file."""
        model, ref = onnx.load(str(src)), onnx.load(str(qdq))
        ref_init = {i.name: numpy_helper.to_array(i) for i in ref.graph.initializer}
        scale_of = {}
        for n in ref.graph.node:
            if n.op_type == "QuantizeLinear" and n.input[0] not in ref_init:
                scale_of.setdefault(n.input[0], float(ref_init[n.input[1]]))
        inits = {i.name: i for i in model.graph.initializer}
        users: dict[str, list] = defaultdict(list)
        for n in model.graph.node:
            for i in n.input:
                users[i].append(n)
        skip, before, added, quantized = set(), defaultdict(list), [], {}
        floating = set(self.excluded(model))
        for n in model.graph.node:
            if n.op_type != "MatMul" or n.name in floating or n.input[1] not in inits or n.input[0] not in scale_of:
                continue
            x, w = n.input[0], numpy_helper.to_array(inits[n.input[1]])
            ws = np.maximum(np.abs(w).max(0), 1e-12) / 127
            if x not in quantized:
                quantized[x] = f"{x}_u8"
                added += [numpy_helper.from_array(np.array(scale_of[x], np.float32), f"{x}_s"),
                          numpy_helper.from_array(np.array(128, np.uint8), f"{x}_z")]
                before[n.name].append(helper.make_node("QuantizeLinear", [x, f"{x}_s", f"{x}_z"], [f"{x}_u8"],
                                                       name=f"{x}_quant"))
            added += [numpy_helper.from_array(np.clip(np.round(w / ws), -127, 127).astype(np.int8), f"{n.name}_wq"),
                      numpy_helper.from_array(ws.astype(np.float32), f"{n.name}_ws")]
            bias, output = "", n.output[0]
            after = users.get(n.output[0], [])
            if len(after) == 1 and after[0].op_type == "Add":
                b = [i for i in after[0].input if i in inits and len(inits[i].dims) == 1]
                if b:
                    bias, output = b[0], after[0].output[0]
                    skip.add(after[0].name)
            before[n.name].append(helper.make_node(
                "MatMulIntegerToFloat", [quantized[x], f"{n.name}_wq", f"{x}_s", f"{n.name}_ws", f"{x}_z", "", bias],
                [output], name=f"{n.name}_int8", domain="com.microsoft"))
            skip.add(n.name)
        nodes = [m for n in model.graph.node for m in before.get(n.name, []) + ([] if n.name in skip else [n])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(added)
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(out))


def candidates(b: Builder, quick: bool) -> dict[str, tuple[str, Callable[[Path], None]]]:
    """name -> (what it is, how to build it at a path). ``fp32`` and ``fp32 EXTENDED`` are the FP32 file."""
    w = b.work

    def qdq_file(p: Path) -> None:
        q.quantize_int8(b.fp32, p, b.calib, b.count, show_progress=False)

    def cpu(p: Path) -> None:
        quantize_int8_cpu(b.fp32, p, b.calib, b.count, show_progress=False)

    def static_mm_cpu(p: Path) -> None:
        convs = w / "cpu_static.convs.onnx"
        float_convs = [n for n, k in conv_kinds(b.proto).items() if k not in CPU_CONV_KINDS]
        b.static(convs, ops=("Conv",), exclude=float_convs)
        b.static_matmul_integer_to_float(p, convs, w / "qdq.onnx")

    full = {
        "fp32": ("FP32 (the reference)", None),
        "qdq": ("segrt Q/DQ today: symmetric s8, per-channel, dedicated pairs (the TensorRT file)", qdq_file),
        "qdq per-tensor": ("as qdq, per-tensor weights",
                           lambda p: b.static(p, per_channel=False)),
        "qdq pre-process": ("quant_pre_process (with its ORT optimization: MatMul + Add -> Gemm) then qdq",
                            lambda p: b.static(p, src=b.pre_processed(True), ops=q.QUANTIZED_OP_TYPES)),
        "qdq pre-process no-opt": ("quant_pre_process (shape inference only) then qdq",
                                   lambda p: b.static(p, src=b.pre_processed(False))),
        "qdq u8 act": ("Q/DQ, uint8 asymmetric activations (U8S8)", lambda p: b.static(p, act="u8")),
        "qdq u8 act, MatMul out float": ("Q/DQ u8, OpTypesToExcludeOutputQuantization MatMul",
                                         lambda p: b.static(p, act="u8",
                                                            extra={"OpTypesToExcludeOutputQuantization": ["MatMul"]})),
        "qdq MatMul only": ("Q/DQ s8 of the weight MatMuls, Convs float", lambda p: b.static(p, ops=("MatMul",))),
        "qdq Conv only": ("Q/DQ s8 of the Convs, MatMuls float", lambda p: b.static(p, ops=("Conv",))),
        "QOperator u8s8": ("QOperator format (QLinearMatMul/QLinearConv in the file), u8 act",
                           lambda p: b.static(p, fmt="qop", act="u8")),
        "QOperator u8s8 per-tensor": ("QOperator, per-tensor weights",
                                      lambda p: b.static(p, fmt="qop", act="u8", per_channel=False)),
        "dynamic MatMul per-tensor": ("quantize_dynamic, weight MatMuls, per-tensor",
                                      lambda p: b.dynamic(p, per_channel=False)),
        "dynamic MatMul": ("quantize_dynamic, weight MatMuls, per-channel (u8 act x s8 weight)",
                           lambda p: b.dynamic(p)),
        "dynamic MatMul U8U8": ("as dynamic MatMul, uint8 weights", lambda p: b.dynamic(p, weights="u8")),
        "dynamic MatMul reduce_range": ("as dynamic MatMul, 7-bit weights", lambda p: b.dynamic(p, reduce_range=True)),
        "dynamic MatMul + attention": ("dynamic, attention MatMuls too", lambda p: b.dynamic(p, attention=True)),
        "static MatMulIntegerToFloat": ("static u8 activations (the Q/DQ file's scales) + contrib "
                                        "MatMulIntegerToFloat with the bias",
                                        lambda p: b.static_matmul_integer_to_float(p, b.fp32, w / "qdq.onnx")),
        "dynamic + patch convs": ("dynamic MatMul + Q/DQ patch-embedding convs",
                                  lambda p: b.convs_then_dynamic(p, {"patch"})),
        "dynamic + reduction convs": ("dynamic MatMul + Q/DQ sequence-reduction convs",
                                      lambda p: b.convs_then_dynamic(p, {"reduction"})),
        "dynamic + depthwise convs": ("dynamic MatMul + Q/DQ depthwise convs",
                                      lambda p: b.convs_then_dynamic(p, {"depthwise"})),
        "dynamic + pointwise convs": ("dynamic MatMul + Q/DQ 1x1 decoder conv",
                                      lambda p: b.convs_then_dynamic(p, {"pointwise"})),
        "dynamic + patch + reduction convs": ("dynamic MatMul + Q/DQ patch-embedding and reduction convs",
                                             lambda p: b.convs_then_dynamic(p, {"patch", "reduction"})),
        WINNER: ("segrt cpu form (quantize_int8_cpu): dynamic MatMul, per-channel + Q/DQ reduction convs", cpu),
        "cpu, static MatMulIntegerToFloat": ("cpu form with static contrib MatMulIntegerToFloat", static_mm_cpu),
        "fp32 EXTENDED": ("FP32, ORT_ENABLE_EXTENDED (no NCHWc layout)", None),
        "cpu EXTENDED": ("cpu form, ORT_ENABLE_EXTENDED", None),
    }
    if quick:
        return {k: full[k] for k in ("fp32", "qdq", "dynamic MatMul", WINNER, "fp32 EXTENDED")}
    return full


def file_of(name: str, work: Path, fp32: Path) -> Path:
    base = name.replace(" EXTENDED", "")
    return fp32 if base == "fp32" else work / (base.replace(" ", "_").replace(",", "").replace("+", "plus") + ".onnx")


# ----------------------------------------------------------------------------- measuring


def session(path: Path, threads: int, extended: bool = False, optimized: Path | None = None,
            profile: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if extended
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(s: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def kernels(path: Path, extended: bool) -> dict[str, int]:
    """Op types of the graph ONNX Runtime runs (its optimized model), for the fused kernels of interest."""
    with tempfile.TemporaryDirectory() as tmp:
        session(path, 1, extended, optimized=Path(tmp) / "optimized.onnx")
        ops = Counter(n.op_type for n in onnx.load(str(Path(tmp) / "optimized.onnx")).graph.node)
    return {k: ops[k] for k in FUSED if ops.get(k)}


def profile_ops(path: Path, x: np.ndarray, threads: int, runs: int = 5) -> dict[str, dict]:
    """ms per run and node count per op type, from ONNX Runtime's profiler (2 warm-up runs left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, threads, profile=Path(tmp) / "ort")
        for _ in range(2 + runs):
            run(s, x)
        events = json.loads(Path(s.end_profiling()).read_text())
    start = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs]
    ms: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            ms[op] += e["dur"] / 1000 / runs
            nodes[op].add(e["name"])
    return {op: {"ms": round(v, 3), "nodes": len(nodes[op])} for op, v in sorted(ms.items(), key=lambda t: -t[1])}


def val_frames(data: Path, count: int) -> list[np.ndarray]:
    paths = sorted((data / "val").glob("*.png"))
    if not paths:
        sys.exit(f"no CamVid val frames under {data}")
    picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
    return [cv2.imread(str(paths[i]), cv2.IMREAD_COLOR) for i in picks]


def miou(path: Path, data: Path, threads: int, limit: int | None) -> float:
    from segrt.runtime.engine import Engine

    engine = Engine(path, threads=threads)
    return float(evaluate(engine.infer, camvid(data, "val"), limit=limit, show_progress=False).miou)


def export_fp32(size: str, work: Path) -> Path:
    path = work / "fp32.onnx"
    cmd = [sys.executable, "-m", "segrt", "export", "camvid-b0", "--form", "logits", "--size", size, "-o", str(path)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


# ----------------------------------------------------------------------------- report


def markdown(data: dict) -> str:
    c = data["conditions"]
    fp32 = next(r for r in data["rows"] if r["name"] == "fp32")
    lines = [f"INT8 forms on ONNX Runtime {data['onnxruntime']} CPU, `{data['model']}` ({data['size']}), "
             f"{data['threads']} intra-op thread(s), {data['rounds']} interleaved rounds (medians); load average "
             f"{c['load_average_start']} at start, {c['load_average_end']} at the end (the machine was shared with "
             "other jobs: compare ratios within this run, not absolute times). Thread CPU ms (1 thread only): the "
             "CPU time of the thread ONNX Runtime computes on, which leaves out waits for a core (steadier than "
             "wall time on a loaded machine; memory and cache contention still count). Agreement: pixels whose label "
             f"matches FP32 on {data['frames']} CamVid val frames (mean / worst frame). mIoU: CamVid val "
             f"({data['miou_images']} images) through segrt's Engine at the model's input size.", ""]
    rows = []
    for r in data["rows"]:
        agree = "-" if r["name"] == "fp32" else f"{r['agreement_mean']:.2%} / {r['agreement_min']:.2%}"
        m = r.get("miou")
        delta = "" if m is None or r["name"] == "fp32" or fp32.get("miou") is None else \
            f" ({100 * (m - fp32['miou']):+.2f})"
        rows.append([f"**{r['name']}**" if r["name"] == WINNER else r["name"], f"{r['ms']:.1f}",
                     f"{r['speedup']:.2f}x", fmt(r["cpu_ms"]), fmt(r["cpu_speedup"], ".2f") + ("x" * bool(r["cpu_ms"])),
                     agree, "-" if m is None else f"{100 * m:.2f}{delta}",
                     ", ".join(f"{k} {v}" for k, v in r["kernels"].items() if k not in ("Add", "Transpose"))])
    lines += table(["candidate", "wall ms", "vs FP32", "thread CPU ms", "vs FP32", "agreement", "mIoU %",
                    "kernels ORT runs"], "lrrrrrrl", rows)
    lines += ["", "What each candidate is:", ""] + [f"- {r['name']}: {r['what']}" for r in data["rows"]]
    for name, prof in data["profiles"].items():
        total = sum(v["ms"] for v in prof.values())
        lines += ["", f"Time per op type, `{name}` (ONNX Runtime profiler, {total:.1f} ms per run summed over "
                  "kernels):", ""]
        lines += table(["op type", "ms", "nodes"], "lrr",
                       [[op, f"{v['ms']:.2f}", str(v["nodes"])] for op, v in list(prof.items())[:14]])
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Bars: thread CPU time at 1 thread (wall time otherwise), labelled with its ratio to FP32 and the wall
    ratio; the dashed line is FP32."""
    plt = pyplot()
    rows = data["rows"]
    cpu = all(r.get("cpu_ms") for r in rows)
    key, ratio = ("cpu_ms", "cpu_speedup") if cpu else ("ms", "speedup")
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    colors = ["tab:green" if r["name"] == WINNER else "tab:gray" if r["name"].startswith("fp32") else
              "tab:red" if r[ratio] < 1 else "tab:blue" for r in rows]
    ax.barh(range(len(rows)), [r[key] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    fp32 = next(r[key] for r in rows if r["name"] == "fp32")
    ax.axvline(fp32, color="k", lw=0.8, ls="--")
    for i, r in enumerate(rows):
        ax.text(r[key], i, f" {r[ratio]:.2f}x" + (f" (wall {r['speedup']:.2f}x)" if cpu else ""), va="center",
                fontsize=7)
    what = "thread CPU time" if cpu else "wall time"
    ax.set_xlabel(f"median {what} per inference (ms), {data['threads']} thread(s), interleaved")
    ax.set_title(f"INT8 forms, ONNX Runtime CPU, {data['size']} (shared machine: compare ratios)", fontsize=9)
    save_figure(fig, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        for path in write_report(args.out, args.render.stem, data, markdown(data), plot):
            print(f"wrote {path}")
        return
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer warns on every call
    holder = tempfile.TemporaryDirectory(prefix="int8-forms-") if args.work is None else None
    work = Path(holder.name) if holder else args.work
    work.mkdir(parents=True, exist_ok=True)
    fp32 = args.model or export_fp32(args.size, work)
    b = Builder(fp32, work, args.data / "train", args.calib_count)
    cands = candidates(b, args.quick)
    order = ["qdq"] + [k for k in cands if k != "qdq"]  # the static-MatMul candidates read the Q/DQ file's scales
    for name in order:
        build = cands[name][1]
        path = file_of(name, work, fp32)
        if build is not None and not path.exists():
            t0 = time.perf_counter()
            build(path)
            print(f"built {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    frames = val_frames(args.data, args.frames)
    inputs = [frames_to_input([f], b.hw, b.meta.mean, b.meta.std) for f in frames]
    sessions = {n: session(file_of(n, work, fp32), args.threads, n.endswith("EXTENDED")) for n in cands}
    runs = {n: (lambda x, s=s: run(s, x)) for n, s in sessions.items()}
    names = list(runs)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}

    def untimed(i: int, r: int) -> None:
        runs[names[i]](inputs[r % 4])

    def timed(i: int, r: int) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        runs[names[i]](inputs[r % 4])
        wall[names[i]].append(1000 * (time.perf_counter() - t0))
        cpu[names[i]].append(1000 * (time.thread_time() - c0))

    conditions = run_interleaved(len(names), untimed, timed, rounds=args.rounds, warmup=2, threads=args.threads)
    reference = [run(sessions["fp32"], x).argmax(1) for x in inputs]
    rows = []
    for name, (what, _) in cands.items():
        agree = [float((run(sessions[name], x).argmax(1) == ref).mean()) for x, ref in zip(inputs, reference)]
        rows.append({"name": name, "what": what, "file": file_of(name, work, fp32).name,
                     "ms": float(np.median(wall[name])), "ms_all": wall[name],
                     "cpu_ms": float(np.median(cpu[name])) if args.threads == 1 else None,
                     "agreement_mean": float(np.mean(agree)), "agreement_min": min(agree),
                     "kernels": kernels(file_of(name, work, fp32), name.endswith("EXTENDED"))})
    base = next(r for r in rows if r["name"] == "fp32")
    for r in rows:
        r["speedup"] = base["ms"] / r["ms"]
        r["cpu_speedup"] = base["cpu_ms"] / r["cpu_ms"] if r["cpu_ms"] else None
        print(f"{r['name']:36s} {r['ms']:7.1f} ms  {r['speedup']:.2f}x  cpu {fmt(r['cpu_ms'])} ms "
              f"{fmt(r['cpu_speedup'], '.2f')}x  agreement {r['agreement_mean']:.4f} (worst {r['agreement_min']:.4f})",
              flush=True)
    int8 = [r for r in rows if not r["name"].startswith("fp32") and not r["name"].endswith("EXTENDED")
            and r["agreement_mean"] >= args.min_agreement]
    finalists = {"fp32", "qdq", WINNER} | {r["name"] for r in sorted(int8, key=lambda r: r["ms"])[: args.finalists]}
    limit = 10 if args.quick else None
    for r in rows:
        if r["name"] in finalists:
            r["miou"] = miou(file_of(r["name"], work, fp32), args.data, args.threads, limit)
            print(f"mIoU {r['name']}: {r['miou']:.4f}", flush=True)
    profiles = {n: profile_ops(file_of(n, work, fp32), inputs[0], args.threads) for n in ("fp32", "qdq", WINNER)}
    model = (f"camvid-b0 (segrt export --form logits --size {args.size})" if args.model is None else
             str(fp32.relative_to(REPO)) if fp32.is_relative_to(REPO) else fp32.name)
    data = {"model": model,
            "size": f"{b.hw[0]}x{b.hw[1]}", "threads": args.threads, "rounds": args.rounds, "frames": len(frames),
            "calibration_images": args.calib_count, "miou_images": limit or len(camvid(args.data, "val")),
            "onnxruntime": ort.__version__, "machine": platform.processor() or platform.machine(),
            "conditions": conditions.to_dict(), "load_average_end": load_average(), "rows": rows,
            "profiles": profiles}
    stem = "int8_forms_quick" if args.quick else "int8_forms"
    for path in write_report(args.out, stem, data, markdown(data), plot):
        print(f"wrote {path}")
    print(f"winner ({WINNER}): {fmt(next(r['speedup'] for r in rows if r['name'] == WINNER), '.2f')}x vs FP32")
    if holder:
        holder.cleanup()


if __name__ == "__main__":
    main()
