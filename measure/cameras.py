"""What a camera sees: end-to-end latency (frame to mask, ``Engine.infer``) beside the network alone at camera
sizes, and the throughput of several cameras through one batched MultiStream against the same cameras run one
after another. ``segrt bench`` and ``benchmarks/multicam.py`` report these; both time through the harness
(:mod:`segrt.measure.harness`: interleaved, threads and load recorded).

Network-only means the logits-form network by itself on a prepared float input at the size the model runs it
(its ``input_size``, or the camera's size for a model with dynamic sizes): for a frame-form model the network
inside it (``frame_graph.network_of``), for a logits-form model the model itself. End-to-end adds what the
model's form leaves outside the network (resize, normalise, upsample, argmax in numpy for the logits form;
only the uint8 hand-over for the frame form).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segrt.measure.bench import network_path, summarize
from segrt.measure.harness import default_threads, run_interleaved
from segrt.runtime.errors import SegrtError

CAMERA_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (720, 1280), (1080, 1920))


def camera_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled to a camera's (H, W), as a camera of that size would deliver the scene."""
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def end_to_end_vs_network(model: str | Path, frame: np.ndarray, *, sizes: Sequence[tuple[int, int]] = CAMERA_SIZES,
                          backend: str = "auto", threads: int | None = None, runs: int = 20, warmup: int = 3,
                          rewarm: int = 2, progress=None) -> dict:
    """Time ``Engine.infer`` on a frame of each camera size and the network alone at the size it runs, all in
    one interleaved run. Returns ``{"rows": [...], "conditions", "model", "form", "skipped"}``; each row has
    the camera size, the network size, both latencies (p50, p95, ...) and ``ratio`` = e2e p50 / network p50."""
    from segrt.runtime.engine import Engine, open_backend

    engine = Engine(model, backend=backend, threads=threads)
    with tempfile.TemporaryDirectory() as scratch:
        net_file = network_path(engine.path, Path(scratch))
        network = open_backend(net_file, backend, threads=threads) if net_file is not None else None
        try:
            return _time_sizes(engine, network, frame, sizes, runs, warmup, rewarm, threads, progress)
        finally:
            if network is not None:
                network.close()
            engine.close()


def _time_sizes(engine, network, frame, sizes, runs, warmup, rewarm, threads, progress) -> dict:
    from segrt.runtime.preprocess import frames_to_input

    names: list[str] = []
    calls: list[Callable[[], object]] = []
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    net_index: dict[tuple[int, int], int] = {}  # one network candidate per network size
    for size in sizes:
        cam = camera_frame(frame, size)
        try:
            engine.infer(cam)  # a fixed-size frame form refuses other sizes: a skip, not a failure
        except SegrtError as exc:
            skipped.append({"camera": list(size), "reason": f"{type(exc).__name__}: {exc}"})
            continue
        net_size = tuple(engine.input_size or size)
        row: dict[str, Any] = {"camera": list(size), "network_size": list(net_size), "e2e": len(names),
                               "network": None}
        names.append(f"e2e {size[0]}x{size[1]}")
        calls.append(lambda cam=cam: engine.infer(cam))
        if network is not None:
            if net_size not in net_index:
                meta = engine.metadata
                x = frames_to_input([cam], net_size, meta.mean, meta.std)
                net_index[net_size] = len(names)
                names.append(f"network {net_size[0]}x{net_size[1]}")
                calls.append(lambda x=x: network.run(x))
            row["network"] = net_index[net_size]
        rows.append(row)
    times: list[list[float]] = [[] for _ in names]

    def timed(i: int, _round: int) -> None:
        start = time.perf_counter()
        calls[i]()
        times[i].append((time.perf_counter() - start) * 1000)

    conditions = run_interleaved(len(names), lambda i, _r: calls[i](), timed, rounds=runs, warmup=warmup,
                                 rewarm=rewarm, threads=threads, progress=progress, label="end-to-end vs network")
    for row in rows:
        row["e2e_ms"] = summarize(times[row.pop("e2e")])
        net = row.pop("network")
        row["network_ms"] = summarize(times[net]) if net is not None else None
        row["ratio"] = row["e2e_ms"]["p50"] / row["network_ms"]["p50"] if net is not None else None
    return {"model": str(engine.path), "form": engine.metadata.form, "backend": engine.backend_name,
            "rows": rows, "skipped": skipped, "conditions": conditions.to_dict(),
            "network_only": "none (TensorRT engine)" if network is None else "logits-form network, float input"}


# ----------------------------------------------------------------------------------------------- several cameras


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process so far, all its threads: capture, decode and inference."""
    times = os.times()  # portable; on Linux the same as getrusage(RUSAGE_SELF)
    return times.user + times.system


def _with_cpu(run: Callable[[], dict]) -> dict:
    """``run()``'s result plus the CPU time it took and the share of the usable cores it kept busy: a pass that
    already keeps every core busy can only get faster by doing less work, not by scheduling it differently."""
    cpu0 = _cpu_seconds()
    out = run()
    out["cpu_s"] = _cpu_seconds() - cpu0
    out["cpu_busy"] = out["cpu_s"] / (out["wall_s"] * default_threads()) if out["wall_s"] > 0 else None
    out["cpu_ms_per_frame"] = 1000 * out["cpu_s"] / out["frames"] if out["frames"] else None
    return out


def _batched_pass(engine, sources: list[str], frames: int) -> dict:
    start = time.perf_counter()
    seen: list[list[int]] = [[] for _ in sources]
    batches = []
    with engine.stream(list(sources), max_frames=frames) as stream:
        for r in stream:
            seen[r.camera.index].append(r.index)
            batches.append(r.batch)
    wall = time.perf_counter() - start
    stats = stream.stats
    return {"frames": stats.delivered, "wall_s": wall, "fps": stats.delivered / wall,
            "lost": sum(_lost(s, frames) for s in seen), "mean_batch": float(np.mean(batches)) if batches else 0.0,
            "cameras": [{"camera": i, "frames": c.delivered, "dropped": c.dropped,
                         "latency_ms_p50": c.latency_ms(50), "latency_ms_p99": c.latency_ms(99)}
                        for i, c in enumerate(stats.cameras)]}


def _sequential_pass(engine, sources: list[str], frames: int) -> dict:
    start = time.perf_counter()
    lost = delivered = 0
    latencies = []
    for source in sources:
        seen = []
        with engine.stream(source, max_frames=frames) as stream:
            for r in stream:
                seen.append(r.index)
        lost += _lost(seen, frames)
        delivered += stream.stats.delivered
        latencies.append({"latency_ms_p50": stream.stats.latency_ms(50), "latency_ms_p99": stream.stats.latency_ms(99)})
    wall = time.perf_counter() - start
    return {"frames": delivered, "wall_s": wall, "fps": delivered / wall, "lost": lost, "cameras": latencies}


def _lost(indices: list[int], expected: int) -> int:
    """Frames missing, repeated or out of order against 0..expected-1."""
    if indices == list(range(expected)):
        return 0
    return max(1, expected - len(set(indices))) if indices == sorted(set(indices)) else expected


def multicam_throughput(model: str | Path, source: str, *, cameras: int = 4, frames: int = 30, rounds: int = 2,
                        backend: str = "auto", threads: int | None = None, progress=None) -> dict:
    """``cameras`` copies of the file ``source`` (``frames`` each) through one MultiStream (one batched
    inference per tick) against the same cameras streamed one after another, interleaved over ``rounds``.
    ``ratio`` is the median over rounds of batched fps / sequential fps; ``lost`` counts frames missing or out
    of order (must be 0: file sources lose none)."""
    from segrt.runtime.engine import Engine
    from segrt.runtime.sources import open_source

    with open_source(source) as src:  # a file: every frame counts, so the pass length must be known
        available = src.frame_count
    if available is not None:
        frames = min(frames, available)
    sources = [source] * cameras
    engine = Engine(model, backend=backend, threads=threads)
    try:
        for frame in list(open_source(source))[:3]:  # warm-up: arenas and kernels, outside the timed passes
            engine.infer(frame)
        passes: list[dict] = [{} for _ in range(rounds)]
        kinds = {"batched": lambda: _with_cpu(lambda: _batched_pass(engine, sources, frames)),
                 "sequential": lambda: _with_cpu(lambda: _sequential_pass(engine, sources, frames))}
        names = list(kinds)

        def timed(i: int, r: int) -> None:
            passes[r][names[i]] = kinds[names[i]]()

        conditions = run_interleaved(len(names), lambda i, r: None, timed, rounds=rounds, rewarm=0, threads=threads,
                                     progress=progress, label=f"{cameras} cameras")
    finally:
        engine.close()
    batched_fps = sum(p["batched"]["frames"] for p in passes) / sum(p["batched"]["wall_s"] for p in passes)
    sequential_fps = sum(p["sequential"]["frames"] for p in passes) / sum(p["sequential"]["wall_s"] for p in passes)
    per_camera = [{"camera": i,
                   "latency_ms_p50": float(np.median([p["batched"]["cameras"][i]["latency_ms_p50"] for p in passes])),
                   "latency_ms_p99": float(np.median([p["batched"]["cameras"][i]["latency_ms_p99"] for p in passes])),
                   "sequential_latency_ms_p50": float(np.median([p["sequential"]["cameras"][i]["latency_ms_p50"]
                                                                 for p in passes]))}
                  for i in range(cameras)]
    return {"model": str(engine.path), "backend": engine.backend_name, "source": source, "cameras": cameras,
            "frames_per_camera": frames, "rounds": rounds, "threads": threads,
            "batched_fps": batched_fps, "sequential_fps": sequential_fps, "ratio_pooled": batched_fps / sequential_fps,
            "ratio": float(np.median([p["batched"]["fps"] / p["sequential"]["fps"] for p in passes])),
            "lost": sum(p["batched"]["lost"] + p["sequential"]["lost"] for p in passes),
            "mean_batch": float(np.mean([p["batched"]["mean_batch"] for p in passes])),
            "max_batch": engine.backend.input_shape[0] or None,
            "cpus": default_threads(), "cpu": _cpu_summary(passes),
            "per_camera": per_camera, "per_round": passes, "conditions": conditions.to_dict()}


def _cpu_summary(passes: list[dict]) -> dict:
    """Per mode: the median share of the usable cores kept busy and CPU ms per frame; and the ceiling any
    re-scheduling of the one-after-another work could reach (1 / its busy share: all cores busy all the time)."""
    out: dict[str, Any] = {}
    for mode in ("batched", "sequential"):
        busy = [p[mode]["cpu_busy"] for p in passes if p[mode].get("cpu_busy") is not None]
        per_frame = [p[mode]["cpu_ms_per_frame"] for p in passes if p[mode].get("cpu_ms_per_frame") is not None]
        out[mode] = {"busy": float(np.median(busy)) if busy else None,
                     "cpu_ms_per_frame": float(np.median(per_frame)) if per_frame else None}
    seq = out["sequential"]["busy"]
    out["ceiling"] = 1.0 / seq if seq else None
    return out


def e2e_markdown(r: dict) -> str:
    from segrt.measure.report import fmt, table

    rows = [[f"{x['camera'][0]}x{x['camera'][1]}", f"{x['network_size'][0]}x{x['network_size'][1]}",
             fmt(x["e2e_ms"]["p50"]), fmt(x["network_ms"]["p50"] if x["network_ms"] else None),
             fmt(x["ratio"], ".2f")] for x in r["rows"]]
    lines = table(["camera", "network", "end-to-end p50 ms", "network-only p50 ms", "e2e / network"], "llrrr", rows)
    return "\n".join(lines)


def multicam_markdown(r: dict) -> str:
    from segrt.measure.report import fmt, table

    lines = table(["mode", "aggregate FPS", "frames lost"], "lrr", [
        [f"{r['cameras']} cameras, one batched MultiStream", fmt(r["batched_fps"], ".2f"),
         str(sum(p["batched"]["lost"] for p in r["per_round"]))],
        [f"{r['cameras']} cameras one after another (Stream each)", fmt(r["sequential_fps"], ".2f"),
         str(sum(p["sequential"]["lost"] for p in r["per_round"]))],
        ["**ratio** (median of rounds)", f"**{r['ratio']:.3f}**", ""]])
    cpu = r.get("cpu")
    if cpu and cpu["sequential"]["busy"]:
        lines += ["", *table(["mode", "cores kept busy", "CPU ms per frame"], "lrr", [
            [m, f"{fmt(None if cpu[m]['busy'] is None else 100 * cpu[m]['busy'], '.0f')}% of {r['cpus']}",
             fmt(cpu[m]["cpu_ms_per_frame"])]
            for m in ("batched", "sequential")])]
        lines += ["", (f"One after another already keeps {100 * cpu['sequential']['busy']:.0f}% of the {r['cpus']} "
                       f"usable cores busy, so running the same work at the same CPU cost per frame could deliver "
                       f"at most {cpu['ceiling']:.2f}x; anything beyond comes from a lower CPU cost per frame "
                       f"({fmt(cpu['batched']['cpu_ms_per_frame'])} ms batched vs "
                       f"{fmt(cpu['sequential']['cpu_ms_per_frame'])} ms one after another here).")]
    lines += ["", *table(["camera", "batched latency p50 ms", "batched p99 ms", "alone p50 ms"], "lrrr", [
        [str(c["camera"]), fmt(c["latency_ms_p50"]), fmt(c["latency_ms_p99"]), fmt(c["sequential_latency_ms_p50"])]
        for c in r["per_camera"]])]
    return "\n".join(lines)
