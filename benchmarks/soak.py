"""Soak: stream >= 10,000 frames through ``Engine.stream`` in file mode and check nothing leaks or is lost.

    python benchmarks/soak.py                                   # 10,000 frames, random B0 at 64x128
    python benchmarks/soak.py --model camvid-b0 --frames 20000  # a real model, longer

The bundled street video (250 frames) is played in a loop by a source that reopens the file at its
end, so one Stream (policy "all", as for any file) sees one long, gap-free file. Goals:

- lost frames: none. Every frame read is delivered exactly once, in order (result.index runs
  0..N-1 without a gap or repeat) and each mask has its frame's height and width.
- RSS growth: under 5%, measured from a baseline taken after a warm-up (allocator pools, ONNX
  Runtime arenas and OpenCV's decoder settle in the first frames) to the end of the run.

A small input size keeps the run short on a busy CPU: the soak is about the pipeline (threads,
hand-overs, stats, sources, decoder), which is the same at every network size.

Writes benchmarks/results/soak.json and soak.md (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from segrt.measure.report import write_json, write_text
from segrt.runtime.engine import Engine
from segrt.runtime.progress import make_progress
from segrt.runtime.sources import FrameSource, open_source

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
VIDEO = REPO / "examples" / "media" / "bikes.mp4"
RSS_GOAL = 0.05


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; psutil is not a dependency)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _page_size()


def _page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


class LoopedVideo(FrameSource):
    """A video file played ``loops`` times back to back, as one long non-live file."""

    def __init__(self, path: Path, loops: int):
        self.inner = open_source(str(path))
        self.name = f"{path.name} x{loops}"
        self.fps = self.inner.fps
        self.loops = loops
        self.loop = 0
        self.frame_count = None

    def open(self) -> None:
        self.inner.open()

    def read(self) -> np.ndarray | None:
        frame = self.inner.read()
        while frame is None and self.loop + 1 < self.loops:
            self.loop += 1
            self.inner.open()
            frame = self.inner.read()
        return frame

    def close(self) -> None:
        self.inner.close()


def export_small(size: tuple[int, int], folder: Path) -> Path:
    """A seeded random B0 at a small input size (needs the export extras: torch)."""
    from segrt.export.model.checkpoints import random_model
    from segrt.export.onnx_export import export_onnx

    loaded = random_model("random:b0:11")
    path = folder / "soak-b0.onnx"
    export_onnx(loaded.model, loaded.metadata, path, size=size)
    return path


def count_video_frames(path: Path) -> int:
    return sum(1 for _ in open_source(str(path)))


def soak(model: str | Path, frames: int, warmup: int, sample_every: int) -> dict:
    per_loop = count_video_frames(VIDEO)
    loops = -(-frames // per_loop)
    engine = Engine(model, threads=1)
    source = LoopedVideo(VIDEO, loops)
    expected_index = 0
    lost: list[str] = []
    samples: list[tuple[int, int]] = []
    baseline = None
    start = time.perf_counter()
    with make_progress() as progress, engine.stream(source, max_frames=frames) as stream:
        task = progress.add_task("soak", total=frames, info="")
        for result in stream:
            if result.index != expected_index:
                lost.append(f"expected frame {expected_index}, got {result.index}")
                expected_index = result.index
            if result.mask.shape != result.frame.shape[:2]:
                lost.append(f"frame {result.index}: mask {result.mask.shape} for frame {result.frame.shape}")
            expected_index += 1
            delivered = expected_index
            if delivered == warmup:
                baseline = rss_bytes()
            if delivered % sample_every == 0:
                samples.append((delivered, rss_bytes()))
            progress.advance(task)
    wall = time.perf_counter() - start
    final = rss_bytes()
    stats = stream.stats.as_dict()
    engine.close()
    source.close()
    if expected_index != frames:
        lost.append(f"delivered {expected_index} of {frames} frames")
    baseline = baseline or samples[0][1]
    growth = (final - baseline) / baseline
    return {
        "model": str(model), "video": str(VIDEO.relative_to(REPO)), "video_frames": per_loop, "loops": loops,
        "frames_requested": frames, "frames_delivered": expected_index, "captured": stats["captured"],
        "dropped": stats["dropped"], "lost": lost, "wall_s": round(wall, 1), "fps": stats["fps"],
        "rss_mb_baseline": round(baseline / 2**20, 1), "rss_mb_final": round(final / 2**20, 1),
        "rss_growth": round(growth, 4), "rss_goal": RSS_GOAL, "warmup_frames": warmup,
        "rss_mb_samples": [(n, round(b / 2**20, 1)) for n, b in samples],
        "pass": not lost and growth < RSS_GOAL and stats["dropped"] == 0,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
    }


def write_report(result: dict, out: Path = RESULTS) -> None:
    write_json(out / "soak.json", result)
    lines = [
        "# Soak: Engine.stream over a looped video file",
        "",
        (f"Command: `python benchmarks/soak.py --frames {result['frames_requested']}` "
         f"(model {result['model_label']}, {result['video']} x{result['loops']})."),
        "",
        "| metric | value | goal |",
        "|---|---|---|",
        f"| frames delivered / requested | {result['frames_delivered']} / {result['frames_requested']} | all |",
        f"| lost or out-of-order frames | {len(result['lost'])} | 0 |",
        f"| dropped (policy all) | {result['dropped']} | 0 |",
        f"| RSS after {result['warmup_frames']}-frame warm-up | {result['rss_mb_baseline']} MB | |",
        f"| RSS at end | {result['rss_mb_final']} MB | |",
        f"| RSS growth | {result['rss_growth'] * 100:.2f}% | < {RSS_GOAL * 100:.0f}% |",
        f"| wall time | {result['wall_s']} s ({result['fps']} FPS on a shared, loaded 2-core CPU) | |",
        "",
        f"**{'PASS' if result['pass'] else 'FAIL'}**",
        "",
        "RSS samples (frames delivered, MB): " + ", ".join(f"{n}: {mb}" for n, mb in result["rss_mb_samples"]),
        "",
    ]
    if result["lost"]:
        lines += ["Lost frames:", ""] + [f"- {x}" for x in result["lost"][:50]]
    write_text(out / "soak.md", "\n".join(lines))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help="ONNX model or bundled name (default: random B0 exported at --size)")
    parser.add_argument("--size", default="64x128", help="HxW for the default model's export")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for soak.json and soak.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, label = args.model, args.model
        else:
            h, w = (int(v) for v in args.size.split("x"))
            model, label = export_small((h, w), Path(tmp)), f"random B0 (11 classes) exported at {h}x{w}"
        result = soak(model, args.frames, args.warmup, args.sample_every)
    result["model_label"] = label
    result["model"] = label
    write_report(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb_samples"}, indent=2))
    return result


if __name__ == "__main__":
    main()
