"""`segrt train --data ROOT`: train a SegFormer, resumable, with a time budget."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands import _training as opt
from segrt.commands._args import choice, parse_size


def train_command(
    data: Path = opt.data_option(),
    fmt: str = opt.format_option(),
    variant: str = typer.Option("b0", "--variant", help="b0..b5"),
    out: Path = opt.run_folder_option("runs/train", "run folder (checkpoints, history); resumes if it has state"),
    iterations: int = opt.iterations_option(4000),
    batch_size: int = opt.batch_size_option(),
    lr: float = opt.lr_option(6e-4),
    loss: str = typer.Option("balanced", "--loss", help="ce, balanced (median-frequency weights) or ohem",
                             callback=choice("ce", "balanced", "ohem")),
    base_size: str = opt.crop_option("384x512", "--base-size",
                                     "HxW images are resized to before augmentation; also the export size"),
    crop: str = opt.crop_option(),
    val_every: int = opt.val_every_option(),
    time_budget: float = opt.time_budget_option(),
    amp: str = opt.amp_option("auto (bf16 on AMX CPUs, fp16/bf16 on CUDA) or off"),
    device: str = opt.device_option(),
    workers: int = opt.workers_option(),
    seed: int = opt.seed_option(),
) -> None:
    """Train on a dataset's train split, validating on its val split; best weights -> OUT/best.safetensors."""
    from segrt.export.model.segformer import SegFormerConfig
    from segrt.export.training.train import TrainConfig, train

    SegFormerConfig.from_variant(variant, 1)  # an unknown --variant fails before the dataset is read
    result = train(TrainConfig(data=str(data), format=fmt, variant=variant, out=str(out), iterations=iterations,
                               batch_size=batch_size, lr=lr, loss=loss, base_size=parse_size(base_size, "--base-size"),
                               crop=parse_size(crop, "--crop"), val_every=val_every, time_budget=time_budget, amp=amp,
                               device=device, workers=workers, seed=seed))
    typer.echo(f"stopped at iteration {result['iteration']} ({'finished' if result['finished'] else 'resumable'}); "
               f"best val mIoU {result['best_miou']:.4f}; weights in {out / 'best.safetensors'}")


def register(root: typer.Typer) -> None:
    root.command("train")(train_command)
