"""`segrt train --data ROOT`: train a SegFormer, resumable, with a time budget."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands._args import parse_size


def train_command(
    data: Path = typer.Option(..., "--data", help="dataset root"),
    fmt: str = typer.Option("camvid", "--format"),
    variant: str = typer.Option("b0", "--variant", help="b0..b5"),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="run folder (checkpoints, history); resumes if it has state"),
    iterations: int = typer.Option(4000, "--iterations"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(6e-4, "--lr"),
    loss: str = typer.Option("balanced", "--loss", help="ce, balanced (median-frequency weights) or ohem"),
    base_size: str = typer.Option("384x512", "--base-size", help="HxW images are resized to before augmentation; also the export size"),
    crop: str = typer.Option("320x320", "--crop"),
    val_every: int = typer.Option(250, "--val-every"),
    time_budget: float = typer.Option(None, "--time-budget", help="seconds; stop with a checkpoint when exceeded"),
    amp: str = typer.Option("auto", "--amp", help="auto (bf16 on AMX CPUs, fp16/bf16 on CUDA) or off"),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(1, "--workers"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train on a dataset's train split, validating on its val split; best weights -> OUT/best.safetensors."""
    from segrt.export.training.train import TrainConfig, train

    result = train(TrainConfig(data=str(data), format=fmt, variant=variant, out=str(out), iterations=iterations,
                               batch_size=batch_size, lr=lr, loss=loss, base_size=parse_size(base_size), crop=parse_size(crop),
                               val_every=val_every, time_budget=time_budget, amp=amp, device=device, workers=workers, seed=seed))
    typer.echo(f"stopped at iteration {result['iteration']} ({'finished' if result['finished'] else 'resumable'}); "
               f"best val mIoU {result['best_miou']:.4f}; weights in {out / 'best.safetensors'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
