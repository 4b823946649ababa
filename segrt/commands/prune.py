"""`segrt prune MODEL --flops 0.5 --data ROOT -o pruned.safetensors`: multi-task channel pruning."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands._args import parse_size


def prune_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint file/folder, bundled name, or random:b0:NUM_CLASSES"),
    flops: float = typer.Option(0.5, "--flops", help="target MACs as a fraction of the model's (0 < f <= 1)"),
    data: Path = typer.Option(..., "--data", help="dataset root (its train split scores the channels)"),
    output: Path = typer.Option(..., "-o", "--output", help="pruned checkpoint (.safetensors) to write"),
    fmt: str = typer.Option("camvid", "--format"),
    count: str = typer.Option("folded", "--count", help="folded: count MACs of the graph export ships (decoder folded); "
                              "unfolded: of the PyTorch model as trained"),
    size: str = typer.Option(None, "--size", help="HxW the MACs are counted at (default: the model's input size)"),
    rounds: int = typer.Option(3, "--rounds", help="score-and-prune rounds (geometric steps to the budget)"),
    steps: int = typer.Option(24, "--steps", help="scoring batches per round, alternating segmentation / presence tasks"),
    batch_size: int = typer.Option(4, "--batch-size"),
    crop: str = typer.Option("320x320", "--crop"),
    cls_weight: float = typer.Option(1.0, "--cls-weight", help="weight of the image-level task's importance"),
    min_keep: float = typer.Option(0.125, "--min-keep", help="fraction of every group family that is always kept"),
    time_budget: float = typer.Option(None, "--time-budget", help="seconds; stop with resumable state when exceeded"),
    threads: int = typer.Option(None, "--threads"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Score every channel group under segmentation + image-level tasks and remove the least important
    ones to a MAC budget; writes a smaller dense model that loads from its checkpoint alone."""
    from rich.console import Console

    from segrt.export.methods.pruning.recipe import PruneConfig, prune
    from segrt.export.loading import load_model

    console = Console()
    with console.status("loading checkpoint"):
        source = load_model(model)
    cfg = PruneConfig(data=str(data), format=fmt, flops=flops, count=count, size=parse_size(size) if size else None,
                      rounds=rounds, steps=steps, batch_size=batch_size, crop=parse_size(crop), cls_weight=cls_weight,
                      min_keep=min_keep, time_budget=time_budget, threads=threads, seed=seed)
    result = prune(source, cfg, output, log=console.print)
    if not result["finished"]:
        console.print(f"[yellow]stopped for the time budget[/]; run the same command again to continue ({result['state']})")
        return
    console.print(f"[green]wrote[/] {output}: {result['gmacs']:.3f} GMACs ({result['fraction']:.1%} of "
                  f"{result['source_gmacs']:.3f}, {count}); recover accuracy with `segrt distill`")


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
