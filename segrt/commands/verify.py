"""`segrt verify MODEL.onnx --engine model.engine`: TensorRT (or a second ONNX) against ONNX Runtime."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segrt.commands._args import at_least_one, existing_file, existing_folder, non_negative, output_file, unit_interval


def _frames(images: Path | None, count: int):
    import cv2

    from segrt.runtime.datasets import IMAGE_SUFFIXES
    from segrt.runtime.errors import ConfigError
    from segrt.runtime.image_header import check_image_file
    from segrt.runtime.samples import sample_frames
    from segrt.runtime.sources import sorted_images

    if images is None:
        return sample_frames()[:count]
    paths = sorted_images(list(images.rglob("*")))[:count]
    for path in paths:  # each header's size first: an oversized image is refused before it is decoded
        check_image_file(path)
    frames = [f for f in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths) if f is not None]
    if not frames:
        raise ConfigError(f"--images {images}: no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return frames


def verify_command(
    model: Path = typer.Argument(..., help="reference ONNX (runs in ONNX Runtime on the CPU)", callback=existing_file),
    engine: Path = typer.Option(..., "--engine", "-e", callback=existing_file,
                                help="TensorRT engine (with its manifest), or a second ONNX"),
    images: Path = typer.Option(None, "--images", help="folder of real images (default: segrt's sample frames)",
                                callback=existing_folder),
    count: int = typer.Option(8, "--count", help="number of images", callback=at_least_one),
    atol: float = typer.Option(1e-2, "--atol", callback=non_negative),
    rtol: float = typer.Option(1e-2, "--rtol", callback=non_negative),
    min_agreement: float = typer.Option(0.99, "--min-agreement", help="worst-image label agreement to pass",
                                        callback=unit_interval),
    json_out: Path = typer.Option(None, "--json", help="write the report as JSON", callback=output_file),
) -> None:
    """Compare an engine with its ONNX on real images (Polygraphy Comparator): per-output error, label agreement."""
    from segrt.engines.verify import verify
    from segrt.runtime.sinks import write_text

    console = Console(soft_wrap=True)
    frames = _frames(images, count)
    with console.status(f"running {engine.name} and {model.name} on {len(frames)} images"):
        report = verify(model, engine, frames, atol=atol, rtol=rtol, min_agreement=min_agreement)
    table = Table(title=f"{engine.name} vs {model.name} on {report.images} images")
    for column in ("output", "max |diff|", "mean |diff|", "max rel. L2"):
        table.add_column(column, justify="right")
    for o in report.outputs:
        table.add_row(o.name, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.max_rel_l2:.3g}")
    console.print(table)
    console.print(f"label agreement: worst image {report.label_agreement:.4%}, mean {report.mean_label_agreement:.4%}")
    console.print(f"every output element within atol {atol:g} / rtol {rtol:g}: "
                  f"{'yes' if report.within_tolerance else 'no (reported, not deciding)'}")
    if json_out:
        console.print(f"wrote {write_text(json_out, json.dumps(asdict(report), indent=2) + chr(10), 'report JSON')}")
    if report.passed:
        console.print(f"[green]PASSED[/] (atol {atol:g}, rtol {rtol:g}, agreement >= {min_agreement:.0%})")
    else:
        console.print(f"[red]FAILED[/] (atol {atol:g}, rtol {rtol:g}, agreement >= {min_agreement:.0%})")
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.command("verify")(verify_command)
