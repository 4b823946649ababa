"""`segrt info MODEL`: what a model is and what it needs."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def info(model: str = typer.Argument("camvid-b0", help="ONNX file, engine or bundled name")) -> None:
    """Show a model's classes, input size, normalisation, backend and provenance."""
    from segrt.runtime.engine import Engine

    engine = Engine(model)
    meta = engine.metadata
    table = Table(title=str(engine.path), show_header=False)
    for key, value in [
        ("backend", engine.backend_name), ("input size (HxW)", "dynamic" if meta.input_size is None else f"{meta.input_size[0]}x{meta.input_size[1]}"),
        ("input shape", str(engine.backend.input_shape)), ("output", meta.output), ("classes", f"{meta.num_classes}: {', '.join(meta.classes)}"),
        ("mean / std (RGB)", f"{meta.mean} / {meta.std}"), ("segrt version", meta.segrt_version or "-"),
        ("source", meta.source or "-"), ("source sha256", meta.source_sha256 or "-"),
    ]:
        table.add_row(key, value)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
