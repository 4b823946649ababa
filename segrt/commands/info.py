"""`segrt info MODEL`: what a model is and what it needs."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from segrt.commands._args import model_spec


def info_command(model: str = typer.Argument("camvid-b0", help="ONNX file, engine or bundled name",
                                             callback=model_spec)) -> None:
    """Show a model's classes, input size, normalisation, backend and provenance."""
    from segrt.runtime.engine import Engine

    engine = Engine(model)
    meta = engine.metadata
    size = "dynamic" if meta.input_size is None else f"{meta.input_size[0]}x{meta.input_size[1]}"
    table = Table(title=str(engine.path), show_header=False)
    for key, value in [
        ("backend", engine.backend_name), ("input size (HxW)", size), ("input shape", str(engine.backend.input_shape)),
        ("output", str(meta.output)), ("classes", f"{meta.num_classes}: {', '.join(str(c) for c in meta.classes)}"),
        ("mean / std (RGB)", f"{meta.mean} / {meta.std}"), ("segrt version", str(meta.segrt_version or "-")),
        ("source", str(meta.source or "-")), ("source sha256", str(meta.source_sha256 or "-")),
    ]:
        table.add_row(key, Text(value))  # Text: class names or paths with [brackets] are not markup
    if "pruning" in meta.extra:
        table.add_row("pruning", Text(_pruning_summary(meta.extra["pruning"])))
    Console().print(table)


def _pruning_summary(text: str) -> str:
    """``0.512 of 1.034 GMACs, widths aligned to 16`` from the record `segrt prune` writes."""
    import json

    try:
        record = json.loads(text)
        macs = f"{float(record['gmacs']):.3f} of {float(record['source_gmacs']):.3f} GMACs"
    except (ValueError, TypeError, KeyError):
        return "(unreadable pruning record)"
    align = record.get("align")
    if align is None:
        return f"{macs}, widths not rounded (pruned before --align)"
    return f"{macs}, " + ("widths not rounded (--align 1)" if align == 1 else f"widths multiples of {align} channels")


def register(root: typer.Typer) -> None:
    root.command("info")(info_command)
