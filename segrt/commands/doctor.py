"""`segrt doctor`: what this machine can do for the TensorRT path and what `segrt build` would pick here."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="print the findings as JSON"),
    root: Path = typer.Option(Path("/"), "--root", hidden=True, help="system root to read (tests)"),
) -> None:
    """Check TensorRT, CUDA driver and runtime, cuda-python, polygraphy, onnx, the GPU, DLA and the JetPack
    release; show the target and plan `segrt build` would use here, and each problem with its fix.
    Always exits 0: a machine without GPU or TensorRT is a valid answer (build a bundle, build on the device)."""
    from segrt.engines.system import diagnose, probe_system

    info = probe_system(root)
    result = diagnose(info)
    console = Console()
    if as_json:
        console.print_json(json.dumps({"target": result.target, "plan": result.plan,
                                       "findings": [asdict(f) for f in result.findings]}))
        return
    table = Table(title="segrt doctor", show_lines=False)
    for column in ("", "found", "problem / fix"):
        table.add_column(column, overflow="fold")
    for f in result.findings:
        mark = "[red]x[/]" if f.problem else "[green]ok[/]"
        note = ""
        if f.problem:
            note = f"[red]{escape(f.problem)}[/]" + (f"\n[yellow]fix:[/] {escape(f.fix)}" if f.fix else "")
        table.add_row(f"{mark} {escape(f.topic)}", escape(f.value), note)
    console.print(table)
    console.print(f"segrt build here: {escape(result.plan)}")
    problems = len(result.problems)
    console.print(f"{problems} problem{'s' if problems != 1 else ''}" if problems else "[green]no problems[/]")


def register(root: typer.Typer) -> None:
    root.command("doctor")(doctor_command)
