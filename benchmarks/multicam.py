"""Several cameras through one batched MultiStream, and end-to-end (frame to mask) vs network-only latency.

    python benchmarks/multicam.py                           # camvid-b0, 4 x examples/media/bikes.mp4
    python benchmarks/multicam.py --model b0.onnx --cameras 4 --frames 60 --rounds 3

Two questions, each answered in one interleaved run (``segrt.measure.harness``; threads and load recorded):

- Throughput: do ``cameras`` file sources through one ``engine.stream([...])`` (one capture thread per camera,
  one ``Engine.infer_batch`` per tick over the cameras with a fresh frame) deliver more frames per second than
  the same cameras streamed one after another (``engine.stream(src)`` each)? Goal: >= 1.1x, no frame lost.
  The headline is the median of the per-round ratios; pooled totals are reported too.
- End to end: how much does ``Engine.infer`` (frame to mask, at camera sizes 640x480, 1280x720, 1920x1080)
  add to the network alone at the size it runs (see :mod:`segrt.measure.cameras`)? Goal for the frame form:
  <= 1.15x at 1280x720 and 1920x1080.

Writes benchmarks/results/multicam.json, .md and .png (``--out STEM`` elsewhere).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segrt.measure.bench import environment
from segrt.measure.cameras import (
    CAMERA_SIZES,
    e2e_markdown,
    end_to_end_vs_network,
    multicam_markdown,
    multicam_throughput,
)
from segrt.measure.report import portable, pyplot, save_figure, write_report
from segrt.runtime.progress import make_progress
from segrt.runtime.samples import sample_frames

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GOAL_THROUGHPUT = 1.1
GOAL_E2E = 1.15


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="camvid-b0")
    parser.add_argument("--source", default=str(REPO / "examples" / "media" / "bikes.mp4"))
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frames", type=int, default=40, help="frames per camera per pass (the sample video has 250)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput passes")
    parser.add_argument("--sizes", nargs="*", type=parse_size, default=list(CAMERA_SIZES),
                        help="camera sizes HxW for end to end vs network (none: skip)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per candidate of the latency comparison")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--out", type=Path, default=RESULTS / "multicam")
    args = parser.parse_args(argv)

    with make_progress() as progress:
        multi = multicam_throughput(args.model, args.source, cameras=args.cameras, frames=args.frames,
                                    rounds=args.rounds, threads=args.threads, progress=progress)
        e2e = (end_to_end_vs_network(args.model, sample_frames()[1], sizes=args.sizes, threads=args.threads,
                                     runs=args.runs, warmup=2, progress=progress) if args.sizes else None)
    result = {"benchmark": "multicam", "multicam": multi, "end_to_end": e2e,
              "goals": {"throughput_ratio": GOAL_THROUGHPUT, "e2e_ratio": GOAL_E2E},
              "environment": environment(args.threads), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    result = portable(result, REPO)  # a committed report names no folder of the machine that wrote it
    md = markdown(result)
    write_report(args.out.parent, args.out.name, result, md, plot)
    print(md)
    return result


def markdown(r: dict) -> str:
    m = r["multicam"]
    cond = m["conditions"]
    lines = [
        "# Several cameras, and end to end vs network only",
        "",
        (f"Model `{m['model']}` ({m['backend']}, batch dimension {m['max_batch'] or 'dynamic'}), {m['cameras']} "
         f"cameras each playing `{m['source']}` ({m['frames_per_camera']} frames), {m['rounds']} interleaved "
         f"rounds, threads {m['threads'] or 'ONNX Runtime default'}; load average {cond['load_average_start']} -> "
         f"{cond['load_average_end']} (other processes share this machine: compare within this run only). "
         f"Measured {r['date']} with `python benchmarks/multicam.py`."),
        "",
        multicam_markdown(m),
        "",
        (f"Goal: batched / one after another >= {r['goals']['throughput_ratio']} with no frame lost: "
         f"{'met' if m['ratio'] >= r['goals']['throughput_ratio'] and m['lost'] == 0 else 'NOT met'} "
         f"({m['ratio']:.3f}, pooled {m['ratio_pooled']:.3f}, {m['lost']} lost; mean frames per inference tick "
         f"{m['mean_batch']:.2f})."),
        "",
    ]
    e = r["end_to_end"]
    if e:
        lines += [f"## End to end (Engine.infer, frame to mask) vs the network alone, {e['form']} form", "",
                  e2e_markdown(e), "",
                  f"Network only: {e['network_only']}. Goal for the frame form at 1280x720 and 1920x1080: "
                  f"<= {r['goals']['e2e_ratio']}x.", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    plt = pyplot()
    m, e = r["multicam"], r["end_to_end"]
    fig, axes = plt.subplots(1, 2 if e else 1, figsize=(11 if e else 5.5, 4), squeeze=False)
    ax = axes[0][0]
    ax.bar(["one batched\nMultiStream", "one after\nanother"], [m["batched_fps"], m["sequential_fps"]],
           color=["tab:blue", "tab:gray"])
    ax.set_ylabel("aggregate frames / s")
    ax.set_title(f"{m['cameras']} cameras: {m['ratio']:.2f}x, {m['lost']} frames lost")
    if e:
        ax = axes[0][1]
        labels = [f"{x['camera'][1]}x{x['camera'][0]}" for x in e["rows"]]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], [x["e2e_ms"]["p50"] for x in e["rows"]], 0.4, label="end to end")
        ax.bar([x + 0.2 for x in xs], [x["network_ms"]["p50"] if x["network_ms"] else 0 for x in e["rows"]], 0.4,
               label="network only")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("p50 ms")
        ax.set_title(f"{e['form']} form: frame to mask vs network")
        ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
