"""`segrt export CHECKPOINT -o model.onnx`: verified ONNX export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ._args import parse_size


def export(
    checkpoint: str = typer.Argument("camvid-b0", help="checkpoint file/folder, bundled name, or random:b0:NUM_CLASSES"),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write"),
    size: str = typer.Option(None, "--size", help="fixed input size HxW (default: the model's own, else 512x512)"),
    dynamic: bool = typer.Option(False, "--dynamic", help="dynamic batch, height and width"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17..21)"),
    labels: bool = typer.Option(False, "--labels", help="in-graph ArgMax: output uint8 labels instead of logits"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="max relative error vs PyTorch on real images"),
) -> None:
    """Export a SegFormer to ONNX (dynamo exporter), embed its metadata, and verify it against PyTorch."""
    from segrt.export.onnx_export import export_onnx
    from segrt.export.resolve import load_model

    console = Console()
    with console.status("loading checkpoint"):
        loaded = load_model(checkpoint)
    hw = parse_size(size) if size else (loaded.metadata.input_size or (512, 512))
    with console.status(f"exporting {'dynamic' if dynamic else f'{hw[0]}x{hw[1]}'} ONNX and verifying on real images"):
        result = export_onnx(loaded.model, loaded.metadata, output, size=hw, dynamic=dynamic, opset=opset,
                             output="labels" if labels else "logits", tolerance=tolerance)
    console.print(f"[green]wrote[/] {result.path}  ({result.path.stat().st_size / 1e6:.1f} MB)")
    console.print(f"verified on {result.images} real images: max relative error {result.max_rel_error:.2e}, "
                  f"label agreement {result.label_agreement:.4%}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
