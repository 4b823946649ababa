"""`segrt run INPUT`: segment an image, a folder of images or a video file; write masks and overlays."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def _images(path: Path) -> list[Path]:
    from segrt.runtime.datasets import IMAGE_SUFFIXES

    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def run(
    input: Path = typer.Argument(None, help="image, folder of images or video (default: a bundled sample frame)"),
    model: str = typer.Option("camvid-b0", "--model", "-m", help="ONNX file, engine or bundled model name"),
    out: Path = typer.Option(Path("out/run"), "--out", "-o", help="output folder"),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime, ort-cuda, ort-tensorrt, tensorrt"),
    alpha: float = typer.Option(0.5, "--alpha", help="overlay opacity"),
    save_masks: bool = typer.Option(True, "--masks/--no-masks", help="write label masks (PNG, one byte per pixel)"),
) -> None:
    """Run segmentation and write label masks (PNG) and colour overlays (JPEG, or MP4 for videos)."""
    import cv2

    from segrt.runtime.engine import Engine
    from segrt.runtime.errors import SourceError
    from segrt.runtime.overlay import draw_legend, overlay
    from segrt.runtime.progress import progress_bar
    from segrt.runtime.samples import sample_paths

    console = Console()
    engine = Engine(model, backend=backend)
    console.print(f"model {engine.path} on {engine.backend_name}")
    if input is None:
        input = sample_paths()[1]
    if not input.exists():
        raise SourceError(f"input {input} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    latencies = []
    if input.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(input))
        if not cap.isOpened():
            raise SourceError(f"cannot open video {input}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        writer = None
        mask_dir = out / "masks"
        if save_masks:
            mask_dir.mkdir(exist_ok=True)

        def frames():
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield frame

        for i, frame in enumerate(progress_bar(frames(), description="segmenting", total=total)):
            t = time.perf_counter()
            mask = engine.infer(frame)
            latencies.append(time.perf_counter() - t)
            vis = draw_legend(overlay(frame, mask, engine.palette, alpha), engine.classes, engine.palette, sorted(set(mask.ravel().tolist())))
            if writer is None:
                writer = cv2.VideoWriter(str(out / f"{input.stem}_overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
            writer.write(vis)
            if save_masks:
                cv2.imwrite(str(mask_dir / f"{i:06d}.png"), mask)
        cap.release()
        if writer is not None:
            writer.release()
        written = f"{out / (input.stem + '_overlay.mp4')}"
    else:
        for path in progress_bar(_images(input), description="segmenting"):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise SourceError(f"cannot read image {path}")
            t = time.perf_counter()
            mask = engine.infer(frame)
            latencies.append(time.perf_counter() - t)
            if save_masks:
                cv2.imwrite(str(out / f"{path.stem}_mask.png"), mask)
            vis = draw_legend(overlay(frame, mask, engine.palette, alpha), engine.classes, engine.palette, sorted(set(mask.ravel().tolist())))
            cv2.imwrite(str(out / f"{path.stem}_overlay.jpg"), vis)
        written = str(out)
    if latencies:
        import numpy as np

        lat = np.array(latencies) * 1000
        console.print(f"{len(lat)} frame(s): latency p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms "
                      f"({1000 / lat.mean():.1f} FPS); wrote {written}")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
