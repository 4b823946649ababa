"""`segrt demo [SOURCE]`: real-time segmentation of a camera, stream, video or image folder.

Shows a window where OpenCV has a GUI (q quits); otherwise, or with --headless, writes the overlay
video. Prints throughput and latency at the end, also after Ctrl-C, and leaves complete files behind.
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
    source: str = typer.Argument(None, help="camera index (0), /dev/videoN, csi://N, rtsp:// or http:// URL, "
                                             "video file, image folder or glob (default: the bundled street video)"),
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
    from segrt.runtime.hud import OverlayRenderer
    from segrt.runtime.progress import make_progress
    from segrt.runtime.sinks import VIDEO_SUFFIXES, MaskSink, VideoSink, Window, gui_available

    console = Console(soft_wrap=True)  # long paths stay on one line, for logs and scripts
    if source is None:
        if not SAMPLE_VIDEO.is_file():
            raise SourceError(f"the bundled sample video {SAMPLE_VIDEO} is missing; pass a SOURCE")
        source = str(SAMPLE_VIDEO)
    show = not headless
    if show and not gui_available():
        console.print("OpenCV has no GUI here (opencv-python-headless, or no display): running headless")
        show = False
    if not show and output is None:
        output = DEFAULT_OUTPUT
    if output is not None and output.suffix.lower() not in VIDEO_SUFFIXES:  # before the model loads
        raise OutputError(f"--output {output}: a video file name ending in {', '.join(VIDEO_SUFFIXES)}")

    engine = Engine(model, backend=backend, threads=threads)
    stream = engine.stream(source, render=OverlayRenderer.for_engine(engine, alpha=alpha), policy=policy,
                           max_frames=max_frames)
    src = stream.source
    console.print(f"model {engine.path} on {engine.backend_name}; source {src.name} "
                  f"({'live' if src.live else 'file'}, policy {stream.policy}){'; q quits' if show else ''}")
    video = masks = None
    try:
        with ExitStack() as stack:
            stack.enter_context(stream)
            video = stack.enter_context(VideoSink(output, fps=src.fps or 25.0)) if output else None
            masks = stack.enter_context(MaskSink(save_masks)) if save_masks else None
            window = stack.enter_context(Window(f"segrt demo: {src.name}")) if show else None
            progress = stack.enter_context(make_progress())
            total = (min(src.frame_count, max_frames) if src.frame_count and max_frames
                     else (src.frame_count or max_frames))
            task = progress.add_task("streaming", total=total, info="")
            for result in stream:
                if video is not None:
                    video.write(result.image)
                if masks is not None:
                    masks.write(result.index, result.mask)
                progress.update(task, advance=1, info=f"{stream.stats.recent_fps:.1f} FPS")
                if window is not None and not window.show(result.image):
                    break
    finally:  # also on Ctrl-C: the writers above are closed by now; report only what they completed
        console.print(stream.stats.summary())
        if video is not None and video.completed is not None:
            console.print(f"wrote {video.completed} ({video.frames} frames)")
        if masks is not None and masks.frames:
            console.print(f"wrote {masks.frames} masks to {masks.folder}")


def register(root: typer.Typer) -> None:
    root.command("demo")(demo_command)
