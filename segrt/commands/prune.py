"""`segrt prune MODEL --flops 0.5 --data ROOT -o pruned.safetensors`: multi-task channel pruning."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands import _training as opt
from segrt.commands._args import (
    at_least_one,
    choice,
    fraction,
    model_spec,
    output_file,
    parse_size,
    size_option,
)


def prune_command(
    model: str = typer.Argument("camvid-b0", callback=model_spec,
                                help="checkpoint file/folder, bundled name, or random:b0:NUM_CLASSES"),
    flops: float = typer.Option(0.5, "--flops", help="target MACs as a fraction of the model's (0 < f <= 1)",
                                callback=fraction),
    data: Path = opt.data_option("dataset root (its train split scores the channels)"),
    output: Path = typer.Option(..., "-o", "--output", help="pruned checkpoint (.safetensors) to write",
                                callback=output_file),
    fmt: str = opt.format_option(),
    count: str = typer.Option("folded", "--count", callback=choice("folded", "unfolded"),
                              help="folded: count MACs of the graph export ships (decoder folded); "
                                   "unfolded: of the PyTorch model as trained"),
    size: str = typer.Option(None, "--size", help="HxW the MACs are counted at (default: the model's input size)",
                             callback=size_option),
    rounds: int = typer.Option(3, "--rounds", help="score-and-prune rounds (geometric steps to the budget)",
                               callback=at_least_one),
    steps: int = typer.Option(24, "--steps", callback=at_least_one,
                              help="scoring batches per round, alternating segmentation / presence tasks"),
    batch_size: int = opt.batch_size_option(4),
    crop: str = opt.crop_option(),
    cls_weight: float = opt.weight_option("--cls-weight", 1.0, "weight of the image-level task's importance"),
    min_keep: float = typer.Option(0.125, "--min-keep", help="fraction of every group family that is always kept",
                                   callback=fraction),
    align: int = typer.Option(16, "--align", callback=at_least_one,
                              help="round pruned widths (MLP hidden, attention, decoder) to multiples of this many "
                                   "channels, as close below the budget as possible (1: no rounding)"),
    time_budget: float = opt.time_budget_option("seconds; stop with resumable state when exceeded"),
    threads: int = opt.threads_option(),
    seed: int = opt.seed_option(),
) -> None:
    """Score every channel group under segmentation + image-level tasks and remove the least important
    ones to a MAC budget; writes a smaller dense model that loads from its checkpoint alone."""
    from rich.console import Console

    from segrt.export.loading import load_model
    from segrt.export.methods.pruning.recipe import PruneConfig, prune

    console = Console()
    cfg = PruneConfig(data=str(data), format=fmt, flops=flops, count=count,
                      size=parse_size(size) if size else None, rounds=rounds, steps=steps, batch_size=batch_size,
                      crop=parse_size(crop, "--crop"), cls_weight=cls_weight, min_keep=min_keep, align=align,
                      time_budget=time_budget, threads=threads, seed=seed)
    with console.status("loading checkpoint"):
        source = load_model(model)
    result = prune(source, cfg, output, log=console.print)
    if not result["finished"]:
        console.print(f"[yellow]stopped for the time budget[/]; run the same command again to continue "
                      f"({result['state']})")
        return
    console.print(f"[green]wrote[/] {output}: {result['gmacs']:.3f} GMACs ({result['fraction']:.1%} of "
                  f"{result['source_gmacs']:.3f}, {count}; "
                  + (f"widths multiples of {align}" if align > 1 else "widths not rounded")
                  + "); recover accuracy with `segrt distill`")


def register(root: typer.Typer) -> None:
    root.command("prune")(prune_command)
