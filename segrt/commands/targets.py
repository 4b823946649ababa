"""`segrt targets`: the deployment targets `segrt build --target` knows."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def targets_command() -> None:
    """List build targets: GPU architecture, expected TensorRT versions, DLA, precision and memory budgets."""
    from segrt.engines.targets import TARGETS
    from segrt.engines.versions import detect_gpu, detect_tensorrt

    table = Table(title="segrt build --target")
    for column in ("target", "GPU", "TensorRT", "DLA", "precision", "workspace MB", "memory MB"):
        numeric = column in ("DLA", "workspace MB", "memory MB")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    table.add_column("description", ratio=1)
    for t in TARGETS.values():
        table.add_row(t.name, t.sm, " or ".join(t.tensorrt), str(t.dla_cores), t.default_precision,
                      str(t.workspace_mb), str(t.memory_budget_mb), t.description)
    console = Console()
    console.print(table)
    trt, gpu = detect_tensorrt(), detect_gpu()
    here = [f"TensorRT {trt}" if trt else "no TensorRT", f"{gpu.name} ({gpu.sm})" if gpu else "no CUDA GPU"]
    buildable = [t.name for t in TARGETS.values() if trt and gpu and t.accepts_gpu(gpu) and t.expects(trt)]
    console.print(f"this machine: {', '.join(here)}; engines can be built here for: "
                  f"{', '.join(buildable) or 'none (segrt build writes a bundle to build on the device)'}")


def register(root: typer.Typer) -> None:
    root.command("targets")(targets_command)
