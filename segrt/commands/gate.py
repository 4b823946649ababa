"""`segrt gate train --teacher T --data ROOT -o OUT`: train DynaSegFormer neuron gates by two-stage distillation;
`segrt gate export CKPT -o m.onnx --mode topk|threshold|static`: export a gated checkpoint so the skipped neurons
are really skipped (TopK + Gather, static shapes; a score threshold, dynamic, ONNX Runtime; or the gates frozen
on training images into a smaller dense model)."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands import _training as opt
from segrt.commands._args import (
    at_least_one,
    choice,
    existing_file,
    existing_folder,
    fail,
    finite,
    fraction,
    model_spec,
    non_negative,
    output_file,
    parse_size,
    positive,
    size_option,
)


def train_command(
    teacher: str = typer.Option("camvid-b0", "--teacher", callback=model_spec,
                                help="unpruned model: the gated student starts as its copy"),
    data: Path = opt.data_option(),
    out: Path = opt.run_folder_option("runs/gate", "run folder (best.safetensors, history); resumes if it has state"),
    fmt: str = opt.format_option(),
    keep_ratio: float = typer.Option(0.5, "--keep-ratio", callback=fraction,
                                     help="target fraction of Mix-FFN hidden neurons kept per block"),
    sparsity_weight: float = opt.weight_option("--sparsity-weight", 10.0, "weight of (kept fraction - keep ratio)^2"),
    gate_lr_scale: float = typer.Option(10.0, "--gate-lr-scale", help="learning-rate multiplier for the gates",
                                        callback=positive),
    calibrate: int = typer.Option(16, "--calibrate", callback=non_negative,
                                  help="training images that set the gates' start (0: start all open)"),
    iterations: int = opt.iterations_option(400),
    batch_size: int = opt.batch_size_option(),
    lr: float = opt.lr_option(1e-4),
    crop: str = opt.crop_option(),
    stage1: float = opt.stage1_option(),
    val_every: int = opt.val_every_option(),
    val_limit: int = typer.Option(None, "--val-limit", help="validate on the first N val images",
                                  callback=at_least_one),
    time_budget: float = opt.time_budget_option(),
    threads: int = opt.threads_option(),
    workers: int = opt.workers_option(),
    seed: int = opt.seed_option(),
) -> None:
    """Gate every Mix-FFN's hidden neurons per image (keep-ratio target), distilled from the unpruned model."""
    import torch
    from rich.console import Console

    from segrt.export.loading import load_model
    from segrt.export.methods.gating.model import GatingConfig
    from segrt.export.methods.gating.recipe import calibration_batches, gated_student, gating_hooks
    from segrt.export.training.distill import distill

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    gating = GatingConfig(keep_ratio=keep_ratio)
    cfg = opt.distill_config(data=data, fmt=fmt, out=out, crop=crop, iterations=iterations, batch_size=batch_size,
                             lr=lr, stage1=stage1, val_every=val_every, val_limit=val_limit, time_budget=time_budget,
                             workers=workers, threads=threads, seed=seed,
                             extra={"gating": gating.to_json(), "sparsity_weight": sparsity_weight,
                                    "gate_lr_scale": gate_lr_scale, "calibrate": calibrate})
    with console.status("loading teacher, calibrating gates"):
        t = load_model(teacher)
        size = tuple(t.metadata.input_size or (512, 512))
        batches = (calibration_batches(str(data), fmt, calibrate, size, t.metadata.mean, t.metadata.std)
                   if calibrate else None)
        s = gated_student(teacher, gating, batches)
    result = distill(t, s, cfg, log=console.print, hooks=gating_hooks(keep_ratio, sparsity_weight, gate_lr_scale))
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); best val mIoU {result['best_miou']:.4f}; "
                  f"weights in {out / 'best.safetensors'}")


def export_command(
    checkpoint: Path = typer.Argument(..., help="gated checkpoint from `segrt gate train`", callback=existing_file),
    out: Path = typer.Option(..., "-o", "--out", help="ONNX file to write", callback=output_file),
    mode: str = typer.Option("topk", "--mode", callback=choice("topk", "threshold", "static"),
                             help="topk: fixed keep ratio, static shapes (TensorRT); threshold: dynamic ratio, "
                                  "batch 1 (ONNX Runtime); static: gates frozen into a smaller dense model "
                                  "(needs --data)"),
    size: str = typer.Option("512x512", "--size", help="input HxW", callback=size_option),
    keep_ratio: float = typer.Option(None, "--keep-ratio", help="topk: override the trained keep ratio",
                                     callback=fraction),
    threshold: float = typer.Option(None, "--threshold", help="threshold: override the trained score threshold",
                                    callback=finite),
    data: Path = typer.Option(None, "--data", help="static: dataset root whose training images freeze the gates",
                              callback=existing_folder),
    fmt: str = opt.format_option(),
    calibrate: int = typer.Option(64, "--calibrate", help="static: training images the mean gate scores come from",
                                  callback=at_least_one),
    align: int = typer.Option(1, "--align", callback=at_least_one,
                              help="topk/static: round every block's kept neurons to a multiple of this "
                                   "(16 suits ONNX Runtime's NCHWc convs)"),
) -> None:
    """Export a gated model; verified numerically against the same gated model in PyTorch."""
    from rich.console import Console

    from segrt.export.loading import load_model
    from segrt.export.methods.gating.model import gated_blocks
    from segrt.export.methods.gating.recipe import calibration_batches, export_gated

    if mode == "static" and data is None:
        fail("--mode static freezes the gates on training images: give --data ROOT")
    hw = parse_size(size)
    console = Console()
    loaded = load_model(str(checkpoint))
    if not gated_blocks(loaded.model):
        fail(f"{checkpoint} has no gated Mix-FFN blocks; train one with `segrt gate train`")
    batches = None
    if mode == "static":
        with console.status(f"reading {calibrate} calibration images"):
            batches = calibration_batches(str(data), fmt, calibrate, hw, loaded.metadata.mean, loaded.metadata.std)
    with console.status(f"exporting ({mode}) and verifying"):
        result = export_gated(loaded.model, loaded.metadata, out, mode, size=hw, keep_ratio=keep_ratio,
                              threshold=threshold, calibration=batches, align=align)
    console.print(f"wrote {result.path} (max relative error vs PyTorch {result.max_rel_error:.2e} on {result.images} "
                  "images)")


def register(root: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Dynamic gated Mix-FFN neurons (DynaSegFormer): train, export.")
    group.command("train")(train_command)
    group.command("export")(export_command)
    root.add_typer(group, name="gate")
