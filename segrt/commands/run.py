"""`segrt run INPUT`: segment an image, a folder (or glob) of images or a video file; write masks and overlays.

Inputs are read by :mod:`segrt.runtime.sources` (the library's rules: which files are images, natural
order, videos decoded past damaged stretches) and results written by :mod:`segrt.runtime.sinks`
(every write checked, files complete before they get their name). "wrote" is printed only for what a
sink has confirmed on disk; any failure exits non-zero with a one-line error.
"""

from __future__ import annotations

import glob
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from segrt.commands._args import existing_path, model_spec, output_folder, unit_interval


def output_stems(paths: list[Path]) -> list[str]:
    """One distinct output name per input image: its stem, or (when two inputs share a stem, as a.png and
    a.jpg, or frames/a.png and more/a.png) the stem plus its suffix, plus its position if still taken."""
    stems = Counter(p.stem for p in paths)
    names = [p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}" for p in paths]
    counts = Counter(names)
    return [name if counts[name] == 1 else f"{name}_{i}" for i, name in enumerate(names)]


def _render(engine, frame: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    from segrt.runtime.overlay import draw_legend, overlay

    vis = overlay(frame, mask, engine.palette, alpha)
    return draw_legend(vis, engine.classes, engine.palette, np.unique(mask).tolist())


def _infer(engine, frame: np.ndarray, where: str, latencies: list[float]) -> np.ndarray:
    """Run one frame; a frame the engine refuses is named (file, or video and frame index) in the error."""
    from segrt.runtime.errors import InputError

    start = time.perf_counter()
    try:
        mask = engine.infer(frame)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc
    latencies.append(time.perf_counter() - start)
    return mask


def _segment_images(console: Console, engine, source, out: Path, alpha: float, save_masks: bool,
                    latencies: list[float]) -> list[str]:
    from segrt.runtime.progress import progress_bar
    from segrt.runtime.sinks import write_image

    paths = list(source.paths)
    overlays = masks = 0

    def done() -> str:  # every file counted here was renamed into place complete
        return f"{overlays} overlay(s)" + (f" and {masks} mask(s)" if save_masks else "") + f" to {out}"

    try:
        for path, stem in progress_bar(list(zip(paths, output_stems(paths))), description="segmenting"):
            frame = source.read()
            mask = _infer(engine, frame, str(path), latencies)
            if save_masks:
                write_image(out / f"{stem}_mask.png", mask, "mask")
                masks += 1
            write_image(out / f"{stem}_overlay.jpg", _render(engine, frame, mask, alpha), "overlay")
            overlays += 1
    except BaseException:  # also Ctrl-C: say what is complete on disk, then fail
        console.print(f"stopped after {overlays} of {len(paths)} image(s); wrote {done()}")
        raise
    return [done()]


def _segment_video(console: Console, engine, source, video_path: Path, out: Path, alpha: float,
                   save_masks: bool, latencies: list[float]) -> list[str]:
    from segrt.runtime.errors import SourceError
    from segrt.runtime.progress import progress_bar
    from segrt.runtime.sinks import MaskSink, VideoSink

    video = masks = None

    def done() -> list[str]:  # only what the sinks confirmed
        written: list[str] = []
        if video is not None and video.completed:
            written.append(f"{video.completed} ({video.frames} frames)")
        if masks is not None and masks.frames:
            written.append(f"{masks.frames} masks to {masks.folder}")
        return written

    try:
        with ExitStack() as stack:
            video = stack.enter_context(VideoSink(video_path, fps=source.fps or 25.0))
            masks = stack.enter_context(MaskSink(out / "masks")) if save_masks else None
            for index, frame in enumerate(progress_bar(source, description="segmenting", total=source.frame_count)):
                mask = _infer(engine, frame, f"{source.name} frame {index}", latencies)
                video.write(_render(engine, frame, mask, alpha))
                if masks is not None:
                    masks.write(index, mask)
    except BaseException:  # also Ctrl-C: the sinks are closed by now; report what they completed, then fail
        console.print(f"stopped; wrote {'; '.join(done()) or 'nothing'}")
        raise
    assert video is not None
    if video.completed is None:
        raise SourceError(f"{source.name}: no frame could be decoded, nothing was written")
    if getattr(source, "undecodable", 0):
        console.print(f"[yellow]warning[/]: {source.undecodable} frame(s) of {source.name} could not be decoded")
    return done()


def _input(param: typer.CallbackParam, value: Path | None) -> Path | None:
    """A file or folder that exists, or a glob (the library's sources expand it)."""
    return value if value is not None and glob.has_magic(str(value)) else existing_path(param, value)


def run_command(
    input: Path = typer.Argument(None, callback=_input,
                                help="image, folder of images or video (default: a bundled sample frame)"),
    model: str = typer.Option("camvid-b0", "--model", "-m", help="ONNX file, engine or bundled model name",
                              callback=model_spec),
    out: Path = typer.Option(Path("out/run"), "--out", "-o", help="output folder", callback=output_folder),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, ort-cuda, ort-tensorrt, tensorrt"),
    alpha: float = typer.Option(0.5, "--alpha", help="overlay opacity", callback=unit_interval),
    save_masks: bool = typer.Option(True, "--masks/--no-masks", help="write label masks (PNG, one byte per pixel)"),
) -> None:
    """Run segmentation and write label masks (PNG) and colour overlays (JPEG, or MP4 for videos)."""
    from segrt.runtime.engine import Engine
    from segrt.runtime.errors import ConfigError, SourceError
    from segrt.runtime.samples import sample_paths
    from segrt.runtime.sinks import prepare_folder
    from segrt.runtime.sources import open_source, parse_source

    console = Console(soft_wrap=True)  # long paths stay on one line, for logs and scripts
    if input is None:
        samples = sample_paths()
        if len(samples) < 2:
            raise SourceError("the bundled sample frames are missing from this installation; pass an INPUT")
        input = samples[1]
    spec = parse_source(str(input))
    if spec.kind not in ("images", "video"):
        raise ConfigError(f"segrt run reads files ({input} is a {spec.kind}); for cameras and streams use segrt demo")
    prepare_folder(out)
    latencies: list[float] = []
    # Opened before the model loads: a folder without images or an undecodable video fails at once.
    with open_source(str(input)) as source:
        engine = Engine(model, backend=backend)
        console.print(f"model {engine.path} on {engine.backend_name}")
        if spec.kind == "video":
            video_path = out / f"{input.stem}_overlay.mp4"
            done = _segment_video(console, engine, source, video_path, out, alpha, save_masks, latencies)
        else:
            done = _segment_images(console, engine, source, out, alpha, save_masks, latencies)
    lat = np.array(latencies) * 1000
    console.print(f"{len(lat)} frame(s): latency p50 {np.percentile(lat, 50):.1f} ms, "
                  f"p95 {np.percentile(lat, 95):.1f} ms ({1000 / lat.mean():.1f} FPS); wrote {'; '.join(done)}")


def register(root: typer.Typer) -> None:
    root.command("run")(run_command)
