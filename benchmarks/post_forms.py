"""Frame to mask: today's numpy/OpenCV path against the frame-form graphs (issue 18), in one interleaved run.

For each camera size, on the same real frames (CamVid val frames upscaled with cv2, and real bikes.mp4 frames
at 640x480 and above), ONNX Runtime CPU:

- ``network``: the logits-form network alone on a prepared input (the bar to reach: within 1.15x of it);
- ``reference``: frames_to_input (cv2 resize, normalise) + network + logits_to_mask (upsample, argmax);
- ``post numpy``: logits_to_mask alone (today's post-processing);
- ``frame dense`` / ``frame refine``: the frame-form graph (uint8 frame in, mask out), end to end, with the
  default bit-exact pre-processing (``pre="exact"``: cv2's fixed-point resize emulated in the graph);
- ``frame refine resize``: the refine form with ``pre="resize"`` (ONNX Resize on the float frame, channels last);
- ``refine pre only``: the frame refine graph cut at the network's input (frame -> normalised network input),
  timed after the interleaved run, back to back with no other session running: within the interleaved run a
  graph this short (~3 ms) read up to twice its time, the worker threads of the session before it still spinning.
  ``refine post`` = frame refine - network - refine pre only (medians): derived, not timed.

Reports p50 latencies, the ratio of each to the network alone, and the worst and mean per-frame pixel agreement
of the frame graphs with the reference masks. Writes ``post_forms.json``, ``post_forms.md`` and ``post_forms.png``
under ``benchmarks/results/``. Usage::

    python benchmarks/post_forms.py                  # bundled camvid-b0, 640x480, 1280x720, 1920x1080
    python benchmarks/post_forms.py --quick          # tiny test model, 2 sizes, few rounds: a smoke run
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from segrt.export.passes import frame_graph as fg
from segrt.measure.harness import default_threads, load_average, run_interleaved, time_latencies
from segrt.measure.report import pyplot, save_figure, table, write_report
from segrt.runtime.backends.onnxruntime import batch_dim_to_fix, declared_input, open_session
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input, logits_to_mask
from segrt.runtime.samples import sample_frames

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SIZES = [(480, 640), (720, 1280), (1080, 1920)]
CANDIDATES = ("network", "reference", "post numpy", "frame dense", "frame refine", "frame refine resize",
              "refine pre only")
GRAPHS = {"frame dense": {"post": "dense"}, "frame refine": {"post": "refine"},
          "frame refine resize": {"post": "refine", "pre": "resize"}}  # to_frame_form options


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="logits-form ONNX (default models/camvid-b0.onnx)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "camvid", help="CamVid root")
    p.add_argument("--frames", type=int, default=4, help="CamVid val frames (plus the bikes.mp4 sample frames)")
    p.add_argument("--rounds", type=int, default=None, help="timed runs per candidate and size (default 30)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny test model, 2 sizes, 4 rounds")
    args = p.parse_args(argv)
    args.model = args.model or REPO / ("tests/fixtures/segformer-tiny.onnx" if args.quick else "models/camvid-b0.onnx")
    args.rounds = args.rounds or (4 if args.quick else 30)
    args.threads = args.threads or default_threads()
    args.sizes = SIZES[:2] if args.quick else SIZES
    return args


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    """A CPU session as segrt's backend opens one: the symbolic batch fixed to 1 (every run here is one frame),
    the same optimisers left out."""
    declared = declared_input(model)
    batch = batch_dim_to_fix(declared[1]) if declared is not None else None
    return open_session(model.SerializeToString(), ["CPUExecutionProvider"], threads, batch_dim=batch)


def camera_frames(args, size: tuple[int, int]) -> list[np.ndarray]:
    paths = sorted((args.data / "val").glob("*.png"))
    if not paths:
        sys.exit(f"no CamVid val frames under {args.data}")
    chosen = [cv2.imread(str(p)) for p in paths[:: max(1, len(paths) // args.frames)][: args.frames]]
    return [cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for f in chosen + sample_frames()]


def measure_size(args, logits: onnx.ModelProto, meta: ModelMetadata, size: tuple[int, int]) -> dict:
    frames = camera_frames(args, size)
    net = session(logits, args.threads)
    graphs = {k: session(fg.to_frame_form(logits, **options), args.threads) for k, options in GRAPHS.items()}
    name = net.get_inputs()[0].name
    pre = session(pre_only(fg.to_frame_form(logits, **GRAPHS["frame refine"]), name), args.threads)
    prepared = [frames_to_input([f], meta.input_size, meta.mean, meta.std) for f in frames]
    outputs = [net.run(None, {name: x})[0][0] for x in prepared]

    def reference(i: int) -> np.ndarray:
        x = frames_to_input([frames[i]], meta.input_size, meta.mean, meta.std)
        return logits_to_mask(net.run(None, {name: x})[0][0], size)

    runs = {
        "network": lambda i: net.run(None, {name: prepared[i]}),
        "reference": reference,
        "post numpy": lambda i: logits_to_mask(outputs[i], size),
        **{k: (lambda i, s=s: s.run(None, {"frame": frames[i][None]})[0][0]) for k, s in graphs.items()},
    }
    names = list(runs)
    ms: dict[str, list[float]] = {n: [] for n in names}
    import time

    def untimed(i: int, r: int) -> None:
        runs[names[i]](r % len(frames))

    def timed(i: int, r: int) -> None:
        t0 = time.perf_counter()
        runs[names[i]](r % len(frames))
        ms[names[i]].append(1000 * (time.perf_counter() - t0))

    # 2 untimed runs before each timed one: one did not always absorb the previous session's spinning threads
    conditions = run_interleaved(len(names), untimed, timed, rounds=args.rounds, warmup=2, rewarm=2,
                                 threads=args.threads)
    expected = [reference(i) for i in range(len(frames))]
    per_frame = {k: [float((runs[k](i) == expected[i]).mean()) for i in range(len(frames))] for k in graphs}
    agreement = {k: min(v) for k, v in per_frame.items()}
    # one candidate, no re-warm: back to back
    ms["refine pre only"] = time_latencies({"pre": lambda f: pre.run(None, {"frame": f[None]})}, frames,
                                           rounds=args.rounds, warmup=5, rewarm=0, threads=args.threads).ms["pre"]
    p50 = {n: float(np.median(v)) for n, v in ms.items()}
    p50["refine post"] = p50["frame refine"] - p50["network"] - p50["refine pre only"]
    return {"size": list(size), "frames": len(frames), "p50_ms": p50,
            "p90_ms": {n: float(np.percentile(v, 90)) for n, v in ms.items()},
            "ratio_to_network": {n: v / p50["network"] for n, v in p50.items()},
            "alone": ["refine pre only"], "derived": ["refine post"],
            "agreement": agreement, "agreement_mean": {k: float(np.mean(v)) for k, v in per_frame.items()},
            "conditions": conditions.to_dict()}


def pre_only(framed: onnx.ModelProto, network_input: str) -> onnx.ModelProto:
    """The frame form's pre-processing alone: its graph from the frame to the network's input."""
    from onnx.utils import Extractor

    return Extractor(framed).extract_model([fg.FRAME_INPUT], [network_input])


def markdown(data: dict) -> str:
    load = data["groups"][0]["conditions"]["load_average_start"]
    lines = [f"Frame to mask on ONNX Runtime CPU ({data['threads']} threads), model `{data['model']}`, "
             f"{data['rounds']} interleaved rounds per size; load average at start {load} "
             "(the machine was shared with other jobs: compare ratios, not absolute times). `refine pre only`: the "
             "frame refine graph up to the network's input, timed alone after the interleaved run; `refine post` = "
             "frame refine - network - refine pre only (derived).", ""]
    ratios = ("frame dense", "frame refine", "frame refine resize", "reference")
    header = ["frame", *[f"{n} ms" for n in (*CANDIDATES, "refine post")], *[f"{n} / network" for n in ratios],
              *[f"agreement {n[6:]} (min / mean)" for n in GRAPHS]]
    rows = []
    for g in data["groups"]:
        h, w = g["size"]
        rows.append([f"{w}x{h}", *[f"{g['p50_ms'][n]:.1f}" for n in (*CANDIDATES, "refine post")],
                     *[f"{g['ratio_to_network'][n]:.2f}x" for n in ratios],
                     *[f"{g['agreement'][n]:.4%} / {g['agreement_mean'][n]:.4%}" for n in GRAPHS]])
    return "\n".join(lines + table(header, "l" + "r" * (len(header) - 1), rows))


def plot(data: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    groups = data["groups"]
    width = 0.8 / len(CANDIDATES)
    for j, name in enumerate(CANDIDATES):
        ax.bar([i + j * width for i in range(len(groups))], [g["p50_ms"][name] for g in groups], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{g['size'][1]}x{g['size'][0]}" for g in groups])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title("frame to mask, ONNX Runtime CPU (shared machine)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logits = onnx.load(str(args.model))
    if fg.is_frame_form(logits):  # a deploy-form model (the bundled ones): measure the network inside it
        logits = fg.network_of(logits)
    meta = ModelMetadata.from_onnx(logits)
    if meta is None:
        sys.exit(f"{args.model} carries no segrt metadata")
    groups = []
    for size in args.sizes:
        groups.append(measure_size(args, logits, meta, size))
        g = groups[-1]
        print(f"{size[1]}x{size[0]}: " + ", ".join(f"{n} {g['p50_ms'][n]:.1f} ms ({g['ratio_to_network'][n]:.2f}x)"
                                                   for n in CANDIDATES)
              + "; agreement (worst frame) " + ", ".join(f"{n[6:]} {g['agreement'][n]:.4%}" for n in GRAPHS))
    data = {"model": str(args.model.relative_to(REPO)) if args.model.is_relative_to(REPO) else str(args.model),
            "threads": args.threads, "rounds": args.rounds, "machine": platform.processor() or platform.machine(),
            "load_average_end": load_average(), "groups": groups}
    stem = "post_forms_quick" if args.quick else "post_forms"
    for path in write_report(args.out, stem, data, markdown(data), plot):
        print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
