"""`segrt demo [SOURCE ...]`: real-time segmentation of cameras, streams, videos or image folders.

Shows a window where OpenCV has a GUI (q quits); otherwise, or with --headless, writes the overlay
video. Prints throughput and latency at the end, also after Ctrl-C, and leaves complete files behind.
Several sources run as one MultiStream (one batched inference per tick) and their overlays are tiled in a
grid, each with its camera's name and FPS; the video gets one grid frame per tick and --save-masks one
sub-folder per camera (cam0, cam1, ...).
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer
from rich.console import Console

from segrt.commands._args import at_least_one, choice, model_spec, output_file, output_folder, unit_interval

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "examples" / "media" / "bikes.mp4"
DEFAULT_OUTPUT = Path("out/demo.mp4")


def demo_command(
    sources: list[str] = typer.Argument(None, metavar="[SOURCE]...",
                                        help="camera index (0), /dev/videoN, csi://N, rtsp:// or http:// URL, video "
                                             "file, image folder or glob (default: the bundled street video); "
                                             "several: tiled, one batched inference per tick"),
    model: str = typer.Option("camvid-b0", "--model", "-m", help="ONNX file, engine or bundled model name",
                              callback=model_spec),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, ort-cuda, ort-tensorrt, tensorrt"),
    headless: bool = typer.Option(False, "--headless", help="no window; write the overlay video instead"),
    output: Path = typer.Option(None, "--output", "-o", callback=output_file,
                                help=f"write the overlay video here (headless default: {DEFAULT_OUTPUT})"),
    save_masks: Path = typer.Option(None, "--save-masks", help="write one label-mask PNG per frame into this folder",
                                    callback=output_folder),
    alpha: float = typer.Option(0.5, "--alpha", help="mask opacity in the overlay", callback=unit_interval),
    policy: str = typer.Option("auto", "--policy", callback=choice("auto", "all", "latest"),
                               help="all: every frame; latest: drop stale frames (cameras); auto: latest for live "
                                    "sources"),
    max_frames: int = typer.Option(None, "--max-frames", help="stop after this many frames", callback=at_least_one),
    threads: int = typer.Option(None, "--threads", help="inference threads (default: ONNX Runtime's choice)",
                                callback=at_least_one),
) -> None:
    """Segment a camera or video in real time: overlay, class legend, FPS and latency HUD."""
    from segrt.runtime.engine import Engine
    from segrt.runtime.errors import OutputError, SourceError
    from segrt.runtime.hud import OverlayRenderer, Tiler
    from segrt.runtime.multistream import MultiStream
    from segrt.runtime.progress import make_progress
    from segrt.runtime.sinks import VIDEO_SUFFIXES, MaskSink, VideoSink, Window, gui_available

    console = Console(soft_wrap=True)  # long paths stay on one line, for logs and scripts
    if not sources:
        if not SAMPLE_VIDEO.is_file():
            raise SourceError(f"the bundled sample video {SAMPLE_VIDEO} is missing; pass a SOURCE")
        sources = [str(SAMPLE_VIDEO)]
    show = not headless
    if show and not gui_available():
        console.print("OpenCV has no GUI here (opencv-python-headless, or no display): running headless")
        show = False
    if not show and output is None:
        output = DEFAULT_OUTPUT
    if output is not None and output.suffix.lower() not in VIDEO_SUFFIXES:  # before the model loads
        raise OutputError(f"--output {output}: a video file name ending in {', '.join(VIDEO_SUFFIXES)}")

    engine = Engine(model, backend=backend, threads=threads)
    stream = engine.stream(sources[0] if len(sources) == 1 else list(sources),
                           render=OverlayRenderer.for_engine(engine, alpha=alpha), policy=policy,
                           max_frames=max_frames)
    many = isinstance(stream, MultiStream)
    srcs = stream.sources if many else [stream.source]
    policies = stream.policies if many else [stream.policy]
    for i, (src, pol) in enumerate(zip(srcs, policies)):
        console.print(f"model {engine.path} on {engine.backend_name}; source {f'{i}: ' if many else ''}{src.name} "
                      f"({'live' if src.live else 'file'}, policy {pol}){'; q quits' if show else ''}")
    video = None
    masks: list = []
    try:
        with ExitStack() as stack:
            stack.enter_context(stream)
            fps = max((s.fps or 25.0) for s in srcs)
            video = stack.enter_context(VideoSink(output, fps=fps)) if output else None
            if save_masks:
                folders = [save_masks / f"cam{i}" for i in range(len(srcs))] if many else [save_masks]
                masks = [stack.enter_context(MaskSink(f)) for f in folders]
            name = ", ".join(s.name for s in srcs)
            window = stack.enter_context(Window(f"segrt demo: {name}")) if show else None
            progress = stack.enter_context(make_progress())
            counts = [min(s.frame_count, max_frames) if s.frame_count and max_frames else (s.frame_count or max_frames)
                      for s in srcs]
            task = progress.add_task("streaming", total=sum(counts) if all(counts) else None, info="")
            tiles = Tiler(len(srcs)) if many else None
            shown = 0  # tick of the grid in the tiles, for a MultiStream
            for result in stream:
                if tiles is not None:
                    if result.tick != shown:  # the previous tick is complete: show and write its grid
                        if not _emit(tiles.image(), video, window):
                            break
                        shown = result.tick
                    tiles.update(result.camera.index, result.image)
                elif video is not None:
                    video.write(result.image)
                if masks:
                    masks[result.camera.index if many else 0].write(result.index, result.mask)
                progress.update(task, advance=1, info=f"{stream.stats.recent_fps:.1f} FPS")
                if tiles is None and window is not None and not window.show(result.image):
                    break
            else:
                if tiles is not None and stream.stats.delivered:
                    _emit(tiles.image(), video, window)
    finally:  # also on Ctrl-C: the writers above are closed by now; report only what they completed
        console.print(stream.stats.summary())
        if video is not None and video.completed is not None:
            console.print(f"wrote {video.completed} ({video.frames} frames)")
        for sink in masks:
            if sink.frames:
                console.print(f"wrote {sink.frames} masks to {sink.folder}")


def _emit(image, video, window) -> bool:
    """Write ``image`` to the video and show it; False when the window was closed (q)."""
    if video is not None:
        video.write(image)
    return window is None or window.show(image)


def register(root: typer.Typer) -> None:
    root.command("demo")(demo_command)
