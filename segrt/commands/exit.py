"""`segrt exit train|export`: dynamic token pruning by early exit (DToP) for a SegFormer."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands import _training as opt
from segrt.commands._args import (
    at_least_one,
    choice,
    existing_file,
    fraction,
    model_spec,
    non_negative,
    output_file,
    size_option,
)


def train_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint file or bundled name", callback=model_spec),
    data: Path = opt.data_option(),
    out: Path = opt.run_folder_option("runs/exit", "run folder (exit_heads.safetensors); resumes if it has state"),
    fmt: str = opt.format_option(),
    points: list[str] = typer.Option(["s2b0", "s2b1"], "--point",
                                     help="exit points, sSTAGEbBLOCK (0-based stage, blocks run before grading)"),
    finetune: bool = typer.Option(False, "--finetune", help="also train the backbone (default: frozen, heads only)"),
    hidden: int = typer.Option(256, "--hidden", help="aux head MLP width (0: LayerNorm + Linear)",
                               callback=non_negative),
    iterations: int = opt.iterations_option(600),
    batch_size: int = opt.batch_size_option(),
    lr: float = opt.lr_option(1e-3),
    crop: str = opt.crop_option(),
    val_every: int = opt.val_every_option(100000, "validation of the full model (unchanged when frozen)"),
    time_budget: float = opt.time_budget_option(),
    threads: int = opt.threads_option(),
    workers: int = opt.workers_option(),
    seed: int = opt.seed_option(),
) -> None:
    """Train auxiliary exit heads with segrt's distillation loop (the model is its own teacher)."""
    from rich.console import Console

    from segrt.export.methods.early_exit.model import parse_exit_name
    from segrt.export.methods.early_exit.recipe import ExitTrainConfig, train_exit_heads

    for point in points:
        parse_exit_name(point)  # a bad --point fails before the model loads
    console = Console()
    cfg = opt.distill_config(data=data, fmt=fmt, out=out, crop=crop, iterations=iterations, batch_size=batch_size,
                             lr=lr, warmup=min(20, iterations // 10), val_every=val_every, time_budget=time_budget,
                             threads=threads, workers=workers, seed=seed, kd_weight=0.0, feature_weight=0.0,
                             embed_weight=0.0)
    heads = ExitTrainConfig(points=list(points), hidden=hidden, finetune=finetune)
    result = train_exit_heads(model, cfg, heads, log=console.print)
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); heads in {result['heads']}")


def export_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint file or bundled name", callback=model_spec),
    heads: Path = typer.Option(..., "--heads", help="exit_heads.safetensors from `segrt exit train`",
                               callback=existing_file),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write", callback=output_file),
    point: str = typer.Option("s2b0", "--point"),
    mode: str = typer.Option("threshold", "--mode", callback=choice("threshold", "budget"),
                             help="threshold (dynamic token counts, ONNX Runtime) or budget (static)"),
    threshold: float = typer.Option(0.9, "--threshold", help="exit when the top probability is above this",
                                    callback=fraction),
    keep_ratio: float = typer.Option(0.5, "--keep-ratio", help="budget mode: fraction of tokens computed",
                                     callback=fraction),
    context: int = typer.Option(4, "--context", help="most confident tokens of each class kept for context",
                                callback=at_least_one),
    dwconv: str = typer.Option("grid", "--dwconv", callback=choice("grid", "zeros"),
                               help="grid: fc1 on every token (exact neighbours); zeros: exited neighbours read as "
                                    "zero (cheaper, less accurate)"),
    size: str = typer.Option(None, "--size", help="HxW (default: the model's input size)", callback=size_option),
) -> None:
    """Export an early-exit model, verified numerically against its PyTorch form."""
    from rich.console import Console

    from segrt.commands._args import parse_size
    from segrt.export.loading import load_model
    from segrt.export.methods.early_exit.model import ExitConfig, attach_exit, load_heads
    from segrt.export.onnx_export import export_onnx

    cfg = ExitConfig(point=point, mode=mode, threshold=threshold, keep_ratio=keep_ratio, context=context, dwconv=dwconv)
    loaded = load_model(model)
    trained, _ = load_heads(heads, loaded.model)
    hw = parse_size(size) if size else tuple(loaded.metadata.input_size or (512, 512))
    res = export_onnx(attach_exit(loaded.model, trained, cfg), exit_metadata(loaded.metadata, cfg), output, size=hw)
    Console().print(f"wrote {res.path} (max relative error vs PyTorch {res.max_rel_error:.2e} on {res.images} images)")


def exit_metadata(metadata, cfg):
    from segrt.runtime.metadata import ModelMetadata

    meta = ModelMetadata(**{**metadata.__dict__, "extra": dict(metadata.extra)})
    meta.extra["early_exit"] = cfg.to_json()
    return meta


def register(root: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True,
                        help="Dynamic token pruning by early exit (DToP): train aux heads, export.")
    group.command("train")(train_command)
    group.command("export")(export_command)
    root.add_typer(group, name="exit")
