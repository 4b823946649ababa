"""`segrt bench MODEL [MODEL ...]`: side-by-side latency, throughput, memory and GMAC/s, interleaved.

MODEL forms (optionally ``NAME=MODEL`` to label a row):
  model.onnx / model.engine      segrt's runtime (ONNX Runtime / TensorRT backend)
  camvid-b0, ckpt.safetensors,   segrt's PyTorch module, eager (also ``torch:SPEC``)
  random:b0:11
  hf:SPEC                        transformers.SegformerForSemanticSegmentation on SPEC's weights, eager
  hf-onnx:SPEC                   that model via plain torch.onnx.export (dynamo), ONNX Runtime defaults
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segrt.commands._args import at_least_one, non_negative, output_file, output_folder, parse_size
from segrt.measure.report import fmt
from segrt.runtime.errors import ConfigError, SourceError

PEER_PREFIXES = ("hf:", "hf-onnx:", "torch:")
NL = "\n\n"  # between the Markdown tables


def _split_label(text: str) -> tuple[str | None, str]:
    if "=" in text and not Path(text).exists():
        name, spec = text.split("=", 1)
        return name.strip() or None, spec.strip()
    return None, text


def is_exported(spec: str) -> bool:
    from segrt.runtime.engine import ENGINE_SUFFIXES

    return spec.lower().endswith((".onnx", *ENGINE_SUFFIXES))


def build_candidates(models: list[str], backend: str, threads: int | None, peers: bool, workdir: Path,
                     check_frames: list) -> list:
    """Turn MODEL arguments into benchmark candidates, peers first when asked for."""
    from segrt.measure.bench import segrt_candidate

    specs = [_split_label(m) for m in models]
    if peers:
        weights = next((s for _, s in specs if not is_exported(s) and not s.startswith(PEER_PREFIXES)), None)
        if weights is None:
            raise ConfigError("--peers needs a checkpoint among MODEL (a bundled name such as camvid-b0, a "
                              ".safetensors file or random:b0:11) whose weights the peers use")
        specs = [("transformers (eager)", f"hf:{weights}"),
                 ("transformers -> ONNX Runtime", f"hf-onnx:{weights}"), *specs]
    candidates = []
    for name, spec in specs:
        if is_exported(spec):
            candidates.append(segrt_candidate(spec, name=name, backend=backend, threads=threads,
                                              macs=_graph_macs(spec)))
            continue
        from segrt.measure import peers as p  # torch and transformers load only for checkpoints

        if spec.startswith("hf:"):
            candidates.append(p.transformers_candidate(spec[3:], threads, name=name or f"transformers {spec[3:]}",
                                                       check_frames=check_frames))
        elif spec.startswith("hf-onnx:"):
            candidates.append(p.plain_onnx_candidate(spec[8:], threads, workdir, name=name or f"plain ONNX {spec[8:]}"))
        else:
            weights = spec.removeprefix("torch:")
            candidates.append(p.torch_candidate(weights, threads, name=name or f"segrt PyTorch {weights}"))
    return candidates


def _graph_macs(path: str):
    def macs(size: tuple[int, int]) -> int | None:
        try:
            from segrt.export.passes.macs import count_macs
        except ImportError:  # onnx is not a runtime dependency: no count, not a failure
            return None
        return count_macs(path, (1, 3, *size)).total

    return macs


def default_sizes(candidates: list, sizes: list[str] | None) -> list[tuple[int, int]]:
    if sizes:
        return [parse_size(s) for s in sizes]
    fixed = next((c.fixed_size for c in candidates if c.fixed_size), None)
    return [tuple(fixed) if fixed else (512, 512)]


def print_group(console: Console, group: dict) -> None:
    h, w = group["size"]
    table = Table(title=f"{h}x{w}, batch 1 (network latency; end-to-end adds preprocessing and mask postprocessing)")
    for col, justify in [("model", "left"), ("runtime", "left"), ("prec", "left"), ("p50 ms", "right"),
                         ("p95 ms", "right"), ("e2e p50", "right"), ("FPS", "right"), ("vs first", "right"),
                         ("GMAC", "right"), ("GMAC/s", "right"), ("% peak", "right"), ("peak MB", "right")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in group["results"]:
        table.add_row(r["name"], str(r["info"].get("backend", r["kind"])), r["precision"],
                      fmt(r["latency_ms"]["p50"]), fmt(r["latency_ms"]["p95"]), fmt(r["end_to_end_ms"]["p50"]),
                      fmt(r["throughput_fps"]), f"{r['speedup_vs_first']:.2f}x", fmt(r["gmacs"], ".2f"),
                      fmt(r["gmacs_per_s"]), fmt(r["pct_of_peak"]), fmt(r["memory_mb"]["peak"], ".0f"))
    console.print(table)
    for p in group["probes"]:
        console.print(f"  peak probe {p['name']} (threads {p['threads']}): {p['gmacs_per_s']:.1f} GMAC/s")
    if group.get("peaks_gmacs_per_s"):
        bw = group.get("bandwidth_gbs")
        console.print("  peaks (best of the sweep and the probes): " + ", ".join(
            f"{k} {v:.1f} GMAC/s" for k, v in sorted(group["peaks_gmacs_per_s"].items()))
            + (f"; memory bandwidth {bw:.1f} GB/s" if bw else ""))
    for s in group["skipped"]:
        console.print(f"  [yellow]skipped[/] {s['name']}: {s['reason']}")


def report_profiles(console: Console, candidates: list, frame, threads: int, group: dict) -> None:
    """ONNX Runtime's profiler on every ONNX candidate of ``group``: kept in the group, summarised on screen."""
    from segrt.measure.profile import profile_group
    from segrt.measure.roofline import profile_roofline, summary_line

    h, w = group["size"]
    profiles = profile_group(candidates, group, frame, threads)
    for name, prof in profiles.items():
        top = ", ".join(f"{o.op_type} {o.ms_per_run:.1f}" for o in prof.top(8))
        kernels = ", ".join(prof.integer_kernels()) or "none (float kernels only)"
        console.print(f"[bold]{name}[/] {h}x{w}: {prof.total_ms_per_run:.1f} ms of kernels per run; "
                      f"top ms: {top}; integer kernels: {kernels}")
        group.setdefault("kernel_profiles", {})[name] = prof.to_dict()
    group["roofline"] = profile_roofline(group, profiles)
    for name, split in group["roofline"].items():
        console.print("  " + summary_line(name, split), highlight=False)


def bench(
    models: list[str] = typer.Argument(..., help="ONNX files, engines, checkpoints/bundled names, hf:SPEC, "
                                       "hf-onnx:SPEC; NAME=MODEL labels a row"),
    size: list[str] = typer.Option(None, "--size", help="input size HxW; repeat for several "
                                   "(default: the models' own, else 512x512)"),
    backend: str = typer.Option("auto", "--backend", help="for ONNX/engines: auto, onnxruntime, ort-cuda, "
                                "ort-tensorrt, tensorrt"),
    threads: int = typer.Option(None, "--threads", help="intra-op threads for every candidate "
                                "(default: all CPUs of this process)"),
    runs: int = typer.Option(20, "--runs", help="timed runs per candidate (interleaved)"),
    warmup: int = typer.Option(3, "--warmup", help="untimed runs per candidate after loading"),
    rewarm: int = typer.Option(1, "--rewarm", help="untimed runs of a candidate right before each of its timed runs "
                               "(1: steady streaming latency; 0: the first run after switching models, cold caches)"),
    peers: bool = typer.Option(False, "--peers", help="put transformers eager and its plain ONNX Runtime export "
                               "(weights of the first checkpoint) first"),
    peak: bool = typer.Option(True, "--peak/--no-peak", help="time large matmuls in the same run for the machine's "
                              "peak GMAC/s"),
    frame_path: Path = typer.Option(None, "--frame", help="image the pipeline is timed on "
                                    "(default: a bundled street frame)"),
    json_out: Path = typer.Option(None, "--json", help="write all numbers as JSON", callback=output_file),
    markdown_out: Path = typer.Option(None, "--markdown", help="write the tables as Markdown", callback=output_file),
    workdir: Path = typer.Option(Path("out/bench"), "--workdir", help="where peer ONNX exports are written",
                                 callback=output_folder),
    profile: bool = typer.Option(False, "--profile", help="also run ONNX Runtime's profiler on each ONNX model: "
                                 "which kernels ran (QLinearConv, QLinearMatMul ...) and time per operator type"),
    roofline: Path = typer.Option(None, "--roofline", help="write a roofline plot (PNG) of the profiled models: "
                                  "compute- vs memory-bound kernel time against the measured peaks (implies "
                                  "--profile)", callback=output_file),
    e2e: bool = typer.Option(True, "--e2e/--no-e2e", help="for ONNX/engines: end-to-end Engine.infer (frame to "
                             "mask) beside the network alone, at camera sizes"),
    camera_size: list[str] = typer.Option(None, "--camera-size", help="camera size HxW for --e2e; repeat for "
                                          "several (default: 480x640, 720x1280, 1080x1920)"),
    cameras: int = typer.Option(4, "--cameras", help="multi-camera throughput of the first ONNX/engine: this many "
                                "copies of --camera-source through one batched MultiStream vs one after another "
                                "(0: skip)", callback=non_negative),
    camera_source: Path = typer.Option(None, "--camera-source", help="video file the cameras play (default: the "
                                       "bundled street video)"),
    camera_frames: int = typer.Option(30, "--camera-frames", help="frames per camera per pass",
                                      callback=at_least_one),
) -> None:
    """Benchmark models side by side: interleaved runs, p50/p95, FPS, memory, GMAC/s vs the machine's peak."""
    import cv2

    from segrt.measure.bench import benchmark_size, environment
    from segrt.measure.harness import default_threads
    from segrt.measure.peak import default_probes, measure_peaks
    from segrt.measure.report import markdown_table, write_json, write_text
    from segrt.runtime.progress import make_progress
    from segrt.runtime.samples import sample_frames

    # Wide enough for the table when the output is a log file rather than a terminal.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    threads = threads or default_threads()
    camera_sizes = [parse_size(s, "--camera-size") for s in camera_size] if camera_size else None  # before any work
    if frame_path is not None:
        from segrt.runtime.image_header import check_image_file

        check_image_file(frame_path)  # the header's size, before OpenCV allocates the pixels
        frame = cv2.imread(str(frame_path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SourceError(f"cannot read image {frame_path}")
    else:
        frame = sample_frames()[1]
    with console.status("preparing candidates"):
        candidates = build_candidates(models, backend, threads, peers, workdir, [frame])
    sizes = default_sizes(candidates, size)
    console.print(f"{len(candidates)} candidate(s), sizes {', '.join(f'{h}x{w}' for h, w in sizes)}, "
                  f"{threads} thread(s), {warmup} warm-up + {runs} interleaved runs each "
                  f"({rewarm} untimed before each)")
    groups = []
    calibration = None
    if peak:
        with console.status("peak sweep: large GEMMs and array streams (best of 3 each)") as status:
            calibration = measure_peaks(threads, progress=lambda what: status.update(f"peak sweep: {what}"))
    with make_progress() as progress:
        for hw in sizes:
            groups.append(benchmark_size(candidates, hw, frame, runs=runs, warmup=warmup, rewarm=rewarm,
                                         threads=threads, progress=progress, calibration=calibration,
                                         probes=default_probes(threads, calibration["best_size"]) if calibration
                                         else ()))
    for group in groups:
        print_group(console, group)
    if profile or roofline:
        for group in groups:
            report_profiles(console, candidates, frame, threads, group)
    if roofline:
        from segrt.measure.roofline import plot_roofline

        splits = {(f"{n} {g['size'][0]}x{g['size'][1]}" if len(groups) > 1 else n): s
                  for g in groups for n, s in g.get("roofline", {}).items()}
        if splits and plot_roofline(splits, groups[0]["peaks_gmacs_per_s"], groups[0].get("bandwidth_gbs"), roofline):
            console.print(f"wrote {roofline}")
        else:
            console.print("[yellow]no roofline plot[/]: no ONNX Runtime model was profiled, or matplotlib is missing")
    exported = [(name or Path(spec).stem, spec) for name, spec in map(_split_label, models) if is_exported(spec)]
    end_to_end, multicam = camera_reports(console, exported if e2e else [], exported[:1] if cameras else [],
                                          frame, camera_sizes, backend, threads, runs, warmup, rewarm, cameras,
                                          camera_source, camera_frames)
    report = {"environment": environment(threads),
              "settings": {"runs": runs, "warmup": warmup, "rewarm": rewarm, "threads": threads, "interleaved": True,
                           "frame": str(frame_path) if frame_path else "bundled sample frame",
                           "frame_size": list(frame.shape[:2])},
              "groups": groups, "end_to_end": end_to_end, "multicam": multicam}
    if json_out:
        console.print(f"wrote {write_json(json_out, report)}")
    if markdown_out:
        from segrt.measure.cameras import e2e_markdown, multicam_markdown

        tables = [markdown_table(g) for g in groups]
        tables += [f"End to end vs network only, {name}:\n\n{e2e_markdown(r)}" for name, r in end_to_end.items()]
        tables += [f"Several cameras, {name}:\n\n{multicam_markdown(r)}" for name, r in multicam.items()]
        console.print(f"wrote {write_text(markdown_out, NL.join(tables))}")


def camera_reports(console: Console, e2e_models: list, multicam_models: list, frame, sizes, backend: str,
                   threads: int, runs: int, warmup: int, rewarm: int, cameras: int, source: Path | None,
                   frames: int) -> tuple[dict, dict]:
    """End-to-end vs network-only at camera sizes, and multi-camera throughput, printed and returned by model."""
    from segrt.commands.demo import SAMPLE_VIDEO
    from segrt.measure.cameras import (
        CAMERA_SIZES,
        e2e_markdown,
        end_to_end_vs_network,
        multicam_markdown,
        multicam_throughput,
    )
    from segrt.runtime.progress import make_progress

    end_to_end, multicam = {}, {}
    with make_progress() as progress:
        for name, spec in e2e_models:
            end_to_end[name] = end_to_end_vs_network(spec, frame, sizes=sizes or CAMERA_SIZES, backend=backend,
                                                     threads=threads, runs=runs, warmup=warmup, rewarm=rewarm,
                                                     progress=progress)
        for name, spec in multicam_models:
            multicam[name] = multicam_throughput(spec, str(source or SAMPLE_VIDEO), cameras=cameras, frames=frames,
                                                 backend=backend, threads=threads, progress=progress)
    for name, r in end_to_end.items():
        console.print(f"[bold]{name}[/]: end to end (Engine.infer, frame to mask) vs the network alone, "
                      f"{r['form']} form, one interleaved run")
        console.print(e2e_markdown(r), highlight=False)
        for s in r["skipped"]:
            console.print(f"  [yellow]skipped[/] {s['camera'][0]}x{s['camera'][1]}: {s['reason']}")
    for name, r in multicam.items():
        console.print(f"[bold]{name}[/]: {r['cameras']} cameras x {r['frames_per_camera']} frames, one batched "
                      f"MultiStream vs one after another ({r['rounds']} interleaved rounds, mean batch "
                      f"{r['mean_batch']:.2f})")
        console.print(multicam_markdown(r), highlight=False)
    return end_to_end, multicam


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
