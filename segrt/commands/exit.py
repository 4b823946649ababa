"""`segrt exit train|export`: dynamic token pruning by early exit (DToP) for a SegFormer."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands._args import parse_size

app = typer.Typer(no_args_is_help=True, help="Dynamic token pruning by early exit (DToP): train aux heads, export.")


@app.command("train")
def train_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint file or bundled name"),
    data: Path = typer.Option(..., "--data", help="dataset root"),
    out: Path = typer.Option(Path("runs/exit"), "-o", "--out", help="run folder (exit_heads.safetensors); resumes if it has state"),
    fmt: str = typer.Option("camvid", "--format"),
    points: list[str] = typer.Option(["s2b0", "s2b1"], "--point", help="exit points, sSTAGEbBLOCK (0-based stage, blocks run before grading)"),
    finetune: bool = typer.Option(False, "--finetune", help="also train the backbone (default: frozen, heads only)"),
    hidden: int = typer.Option(256, "--hidden", help="aux head MLP width (0: LayerNorm + Linear)"),
    iterations: int = typer.Option(600, "--iterations"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    crop: str = typer.Option("320x320", "--crop"),
    val_every: int = typer.Option(100000, "--val-every", help="validation of the full model (unchanged when frozen)"),
    time_budget: float = typer.Option(None, "--time-budget", help="seconds; stop with a checkpoint when exceeded"),
    threads: int = typer.Option(None, "--threads"),
    workers: int = typer.Option(1, "--workers"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train auxiliary exit heads with segrt's distillation loop (the model is its own teacher)."""
    from rich.console import Console

    from segrt.export.training.distill import DistillConfig
    from segrt.export.methods.early_exit.recipe import ExitTrainConfig, train_exit_heads

    console = Console()
    cfg = DistillConfig(data=str(data), format=fmt, out=str(out), iterations=iterations, batch_size=batch_size, lr=lr,
                        warmup=min(20, iterations // 10), crop=parse_size(crop), val_every=val_every, time_budget=time_budget,
                        threads=threads, workers=workers, seed=seed, kd_weight=0.0, feature_weight=0.0, embed_weight=0.0)
    result = train_exit_heads(model, cfg, ExitTrainConfig(points=list(points), hidden=hidden, finetune=finetune), log=console.print)
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); heads in {result['heads']}")


@app.command("export")
def export_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint file or bundled name"),
    heads: Path = typer.Option(..., "--heads", help="exit_heads.safetensors from `segrt exit train`"),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write"),
    point: str = typer.Option("s2b0", "--point"),
    mode: str = typer.Option("threshold", "--mode", help="threshold (dynamic token counts, ONNX Runtime) or budget (static)"),
    threshold: float = typer.Option(0.9, "--threshold", help="exit when the top probability is above this"),
    keep_ratio: float = typer.Option(0.5, "--keep-ratio", help="budget mode: fraction of tokens computed"),
    context: int = typer.Option(4, "--context", help="most confident tokens of each class kept for context"),
    dwconv: str = typer.Option("grid", "--dwconv", help="grid: fc1 on every token (exact neighbours); zeros: exited neighbours read as zero (cheaper, less accurate)"),
    size: str = typer.Option(None, "--size", help="HxW (default: the model's input size)"),
) -> None:
    """Export an early-exit model, verified numerically against its PyTorch form."""
    from rich.console import Console

    from segrt.export.methods.early_exit.model import ExitConfig, attach_exit, load_heads
    from segrt.export.onnx_export import export_onnx
    from segrt.export.loading import load_model

    loaded = load_model(model)
    cfg = ExitConfig(point=point, mode=mode, threshold=threshold, keep_ratio=keep_ratio, context=context, dwconv=dwconv)
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
    root.add_typer(app, name="exit")
