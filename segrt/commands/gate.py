"""`segrt gate train --teacher T --data ROOT -o OUT`: train DynaSegFormer neuron gates by two-stage distillation;
`segrt gate export CKPT -o m.onnx --mode topk|threshold|static`: export a gated checkpoint so the skipped neurons
are really skipped (TopK + Gather, static shapes; a score threshold, dynamic, ONNX Runtime; or the gates frozen
on training images into a smaller dense model)."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands._args import parse_size


def gate_command(
    teacher: str = typer.Option("camvid-b0", "--teacher", help="unpruned model: the gated student starts as its copy"),
    data: Path = typer.Option(..., "--data", help="dataset root"),
    out: Path = typer.Option(Path("runs/gate"), "-o", "--out", help="run folder (best.safetensors, history); resumes if it has state"),
    fmt: str = typer.Option("camvid", "--format"),
    keep_ratio: float = typer.Option(0.5, "--keep-ratio", help="target fraction of Mix-FFN hidden neurons kept per block"),
    sparsity_weight: float = typer.Option(10.0, "--sparsity-weight", help="weight of (kept fraction - keep ratio)^2"),
    gate_lr_scale: float = typer.Option(10.0, "--gate-lr-scale", help="learning-rate multiplier for the gates"),
    calibrate: int = typer.Option(16, "--calibrate", help="training images that set the gates' start (0: start all open)"),
    iterations: int = typer.Option(400, "--iterations"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    crop: str = typer.Option("320x320", "--crop"),
    stage1: float = typer.Option(0.3, "--stage1", help="fraction of iterations of feature-level KD before logit KD"),
    val_every: int = typer.Option(250, "--val-every"),
    val_limit: int = typer.Option(None, "--val-limit", help="validate on the first N val images"),
    time_budget: float = typer.Option(None, "--time-budget", help="seconds; stop with a checkpoint when exceeded"),
    threads: int = typer.Option(None, "--threads"),
    workers: int = typer.Option(1, "--workers"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Gate every Mix-FFN's hidden neurons per image (keep-ratio target), distilled from the unpruned model."""
    import torch
    from rich.console import Console

    from segrt.export.training.distill import DistillConfig, distill
    from segrt.export.methods.gating.model import GatingConfig
    from segrt.export.methods.gating.recipe import calibration_batches, gated_student, gating_hooks
    from segrt.export.loading import load_model

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    gating = GatingConfig(keep_ratio=keep_ratio)
    with console.status("loading teacher, calibrating gates"):
        t = load_model(teacher)
        size = tuple(t.metadata.input_size or (512, 512))
        batches = calibration_batches(str(data), fmt, calibrate, size, t.metadata.mean, t.metadata.std) if calibrate else None
        s = gated_student(teacher, gating, batches)
    cfg = DistillConfig(data=str(data), format=fmt, out=str(out), iterations=iterations, batch_size=batch_size, lr=lr,
                        crop=parse_size(crop), stage1=stage1, val_every=val_every, val_limit=val_limit,
                        time_budget=time_budget, workers=workers, threads=threads, seed=seed,
                        extra={"gating": gating.to_json(), "sparsity_weight": sparsity_weight,
                               "gate_lr_scale": gate_lr_scale, "calibrate": calibrate})
    result = distill(t, s, cfg, log=console.print, hooks=gating_hooks(keep_ratio, sparsity_weight, gate_lr_scale))
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); best val mIoU {result['best_miou']:.4f}; "
                  f"weights in {out / 'best.safetensors'}")


def export_command(
    checkpoint: Path = typer.Argument(..., help="gated checkpoint from `segrt gate train`"),
    out: Path = typer.Option(..., "-o", "--out", help="ONNX file to write"),
    mode: str = typer.Option("topk", "--mode", help="topk: fixed keep ratio, static shapes (TensorRT); threshold: dynamic ratio, batch 1 (ONNX Runtime); static: gates frozen into a smaller dense model (needs --data)"),
    size: str = typer.Option("512x512", "--size", help="input HxW"),
    keep_ratio: float = typer.Option(None, "--keep-ratio", help="topk: override the trained keep ratio"),
    threshold: float = typer.Option(None, "--threshold", help="threshold: override the trained score threshold"),
    data: Path = typer.Option(None, "--data", help="static: dataset root whose training images freeze the gates"),
    fmt: str = typer.Option("camvid", "--format"),
    calibrate: int = typer.Option(64, "--calibrate", help="static: training images the mean gate scores come from"),
    align: int = typer.Option(1, "--align", help="topk/static: round every block's kept neurons to a multiple of this (16 suits ONNX Runtime's NCHWc convs)"),
) -> None:
    """Export a gated model; verified numerically against the same gated model in PyTorch."""
    from rich.console import Console

    from segrt.export.methods.gating.model import gated_blocks

    from segrt.export.methods.gating.recipe import export_gated
    from segrt.export.loading import load_model

    console = Console()
    loaded = load_model(str(checkpoint))
    if not gated_blocks(loaded.model):
        from segrt.commands._args import fail

        fail(f"{checkpoint} has no gated Mix-FFN blocks; train one with `segrt gate train`")
    hw = parse_size(size)
    batches = None
    if mode == "static":
        if data is None:
            from segrt.commands._args import fail

            fail("--mode static freezes the gates on training images: give --data ROOT")
        from segrt.export.methods.gating.recipe import calibration_batches

        with console.status(f"reading {calibrate} calibration images"):
            batches = calibration_batches(str(data), fmt, calibrate, hw, loaded.metadata.mean, loaded.metadata.std)
    with console.status(f"exporting ({mode}) and verifying"):
        result = export_gated(loaded.model, loaded.metadata, out, mode, size=hw, keep_ratio=keep_ratio,
                              threshold=threshold, calibration=batches, align=align)
    console.print(f"wrote {result.path} (max relative error vs PyTorch {result.max_rel_error:.2e} on {result.images} images)")


def register(app: typer.Typer) -> None:
    gate = typer.Typer(no_args_is_help=True, help="Dynamic gated Mix-FFN neurons (DynaSegFormer): train, export.")
    gate.command("train")(gate_command)
    gate.command("export")(export_command)
    app.add_typer(gate, name="gate")
