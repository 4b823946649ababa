"""Streaming throughput on a video file vs. 1 / (bare Engine.infer latency), measured in one run.

    python benchmarks/stream_bench.py                      # camvid-b0 on examples/media/bikes.mp4
    python benchmarks/stream_bench.py --model b0.onnx --frames 100 --rounds 3

The question: does pipelining (decode, inference and rendering in overlapped threads) keep the
network busy, i.e. is the streaming frame rate close to what back-to-back ``Engine.infer`` calls on
frames already in memory would give? Goal: >= 0.9x.

Each round times, one after the other on the same frames (``segrt.measure.harness``: interleaved rounds,
GC out of the passes, threads and load recorded; a pass is long enough to need no re-warm run):
  bare           Engine.infer on every decoded frame, one after another (no decode, nothing else)
  stream         Engine.stream(file): decode + inference in threads, masks to the caller
  stream+render  the same plus the overlay/legend/HUD renderer and writing an MP4, as `segrt demo` does
Many short rounds interleave the three so that load from other processes hits all of them alike;
the headline ratio is the median of the per-round ratios, which a load change in the middle of one
round cannot drag far (pooled totals are reported too). Stream rates are frames / wall time of the
whole pass, pipeline fill included (conservative).

Writes benchmarks/results/stream.json and stream.md (``--out STEM`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from segrt.measure.harness import run_interleaved
from segrt.measure.report import write_json, write_text
from segrt.runtime.engine import Engine
from segrt.runtime.hud import OverlayRenderer
from segrt.runtime.progress import make_progress
from segrt.runtime.sinks import VideoSink
from segrt.runtime.sources import open_source

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GOAL = 0.9


def display_path(path: str | Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def bare_pass(engine: Engine, frames: list[np.ndarray], tick) -> dict:
    latencies = []
    start = time.perf_counter()
    for frame in frames:
        t = time.perf_counter()
        engine.infer(frame)
        latencies.append(time.perf_counter() - t)
        tick()
    wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"frames": len(frames), "wall_s": wall, "latency_ms_mean": float(lat.mean()),
            "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p95": float(np.percentile(lat, 95)),
            "fps": 1000.0 / float(lat.mean())}


def stream_pass(engine: Engine, source: str, frames: int, tick, render: bool, scratch: Path) -> dict:
    start = time.perf_counter()
    renderer = OverlayRenderer.for_engine(engine) if render else None
    with engine.stream(source, max_frames=frames, render=renderer) as stream:
        if render:
            with VideoSink(scratch / "bench.mp4", fps=stream.source.fps or 25) as video:
                for result in stream:
                    video.write(result.image)
                    tick()
        else:
            for _ in stream:
                tick()
    wall = time.perf_counter() - start
    stats = stream.stats
    return {"frames": stats.delivered, "wall_s": wall, "fps": stats.delivered / wall, "steady_fps": stats.fps,
            "latency_ms_p50": stats.latency_ms(50), "latency_ms_p95": stats.latency_ms(95),
            "infer_ms_p50": stats.infer_ms(50), "dropped": stats.dropped}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="camvid-b0")
    parser.add_argument("--source", default=str(REPO / "examples" / "media" / "bikes.mp4"))
    parser.add_argument("--frames", type=int, default=50, help="frames per pass (the sample video has 250)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--out", type=Path, default=RESULTS / "stream")
    args = parser.parse_args(argv)

    engine = Engine(args.model, threads=args.threads)
    frames = list(open_source(args.source))[: args.frames]
    n = len(frames)
    for frame in frames[:5]:  # warm-up: first runs allocate arenas and pick kernels
        engine.infer(frame)
    passes: list[dict] = [{} for _ in range(args.rounds)]
    with make_progress() as progress, tempfile.TemporaryDirectory() as scratch:
        task = progress.add_task("benchmark", total=3 * n * args.rounds, info="")

        def tick() -> None:
            progress.advance(task)

        kinds = {"bare": lambda: bare_pass(engine, frames, tick),
                 "stream": lambda: stream_pass(engine, args.source, n, tick, False, Path(scratch)),
                 "stream_render": lambda: stream_pass(engine, args.source, n, tick, True, Path(scratch))}
        names = list(kinds)

        def timed(i: int, r: int) -> None:
            progress.update(task, info=f"round {r + 1}: {names[i].replace('_', '+')}")
            passes[r][names[i]] = kinds[names[i]]()

        conditions = run_interleaved(len(names), lambda i, r: None, timed, rounds=args.rounds, rewarm=0,
                                     threads=args.threads)
    rounds = [{**p, "ratio": p["stream"]["fps"] / p["bare"]["fps"],
               "ratio_render": p["stream_render"]["fps"] / p["bare"]["fps"]} for p in passes]
    load_before, load_after = conditions.load_average_start, conditions.load_average_end

    # Pooled over rounds: total frames / total time, the same frames for all three.
    bare_fps = sum(x["bare"]["frames"] for x in rounds) / sum(x["bare"]["frames"] / x["bare"]["fps"] for x in rounds)
    stream_fps = sum(x["stream"]["frames"] for x in rounds) / sum(x["stream"]["wall_s"] for x in rounds)
    render_fps = sum(x["stream_render"]["frames"] for x in rounds) / sum(x["stream_render"]["wall_s"] for x in rounds)
    result = {
        "benchmark": "stream", "model": display_path(engine.path), "backend": engine.backend_name,
        "input_size": list(engine.input_size or ()), "source": display_path(args.source),
        "frames_per_pass": n, "rounds": args.rounds, "threads": args.threads,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_before": load_before[0] if load_before else None,
                    "load_avg_1m_after": load_after[0] if load_after else None},
        "bare_fps": bare_fps, "stream_fps": stream_fps, "stream_render_fps": render_fps,
        "ratio": float(np.median([x["ratio"] for x in rounds])),
        "ratio_render": float(np.median([x["ratio_render"] for x in rounds])),
        "ratio_pooled": stream_fps / bare_fps, "ratio_render_pooled": render_fps / bare_fps, "goal": GOAL,
        "per_round": rounds, "conditions": conditions.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [
        "# Streaming throughput vs. bare inference",
        "",
        (f"Model `{r['model']}` ({r['backend']}, input {'x'.join(map(str, r['input_size']))}), "
         f"source `{r['source']}`, {r['frames_per_pass']} frames per pass, {r['rounds']} interleaved rounds; "
         f"{r['machine']['cpus']} CPUs, load average {r['machine']['load_avg_1m_before']} -> "
         f"{r['machine']['load_avg_1m_after']} (other processes). Measured {r['date']} with "
         "`python benchmarks/stream_bench.py`."),
        "",
        "| round | bare infer FPS (1 / mean latency) | stream FPS | ratio | stream + render + MP4 FPS | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(r["per_round"], 1):
        lines.append(f"| {i} | {x['bare']['fps']:.2f} ({x['bare']['latency_ms_mean']:.0f} ms) | "
                     f"{x['stream']['fps']:.2f} | {x['ratio']:.3f} | {x['stream_render']['fps']:.2f} | "
                     f"{x['ratio_render']:.3f} |")
    lines += [
        (f"| pooled | {r['bare_fps']:.2f} | {r['stream_fps']:.2f} | {r['ratio_pooled']:.3f} | "
         f"{r['stream_render_fps']:.2f} | {r['ratio_render_pooled']:.3f} |"),
        f"| **median** | | | **{r['ratio']:.3f}** | | **{r['ratio_render']:.3f}** |",
        "",
        (f"Goal: stream / bare >= {r['goal']} (median over rounds): {'met' if r['ratio'] >= r['goal'] else 'NOT met'} "
         f"({r['ratio']:.3f}; with rendering and video writing {r['ratio_render']:.3f})."),
        ("Stream FPS = frames / wall time of the whole pass, including decoding and pipeline fill. "
         "Bare = `Engine.infer` back to back on frames already decoded in memory."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
