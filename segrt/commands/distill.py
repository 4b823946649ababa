"""`segrt distill --teacher T --student S --data ROOT -o OUT`: student-teacher training, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands._args import parse_size


def distill_command(
    teacher: str = typer.Option(..., "--teacher", help="teacher checkpoint or bundled name"),
    student: str = typer.Option(..., "--student", help="student checkpoint (e.g. from `segrt prune`) or random:b0:NUM_CLASSES"),
    data: Path = typer.Option(..., "--data", help="dataset root"),
    out: Path = typer.Option(Path("runs/distill"), "-o", "--out", help="run folder (best.safetensors, history); resumes if it has state"),
    fmt: str = typer.Option("camvid", "--format"),
    iterations: int = typer.Option(2000, "--iterations"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(2e-4, "--lr"),
    crop: str = typer.Option("320x320", "--crop"),
    temperature: float = typer.Option(1.0, "--temperature", help="logit KD temperature"),
    kd_weight: float = typer.Option(1.0, "--kd-weight"),
    feature_weight: float = typer.Option(1.0, "--feature-weight", help="CSF feature-map loss weight"),
    embed_weight: float = typer.Option(1.0, "--embed-weight", help="patch-embedding alignment weight"),
    stage1: float = typer.Option(0.3, "--stage1", help="fraction of iterations of feature-level KD before logit KD"),
    assistant: bool = typer.Option(False, "--assistant", help="add the embedding assistant"),
    val_every: int = typer.Option(250, "--val-every"),
    time_budget: float = typer.Option(None, "--time-budget", help="seconds; stop with a checkpoint when exceeded"),
    amp: str = typer.Option("auto", "--amp"),
    device: str = typer.Option("auto", "--device"),
    workers: int = typer.Option(1, "--workers"),
    threads: int = typer.Option(None, "--threads"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Distil a teacher into a student (logit KD, CSF feature maps, patch-embedding alignment; two stages)."""
    from rich.console import Console

    from segrt.export.training.distill import DistillConfig, distill
    from segrt.export.loading import load_model

    console = Console()
    with console.status("loading teacher and student"):
        t, s = load_model(teacher), load_model(student)
    cfg = DistillConfig(data=str(data), format=fmt, out=str(out), iterations=iterations, batch_size=batch_size, lr=lr,
                        crop=parse_size(crop), temperature=temperature, kd_weight=kd_weight, feature_weight=feature_weight,
                        embed_weight=embed_weight, stage1=stage1, assistant=assistant, val_every=val_every,
                        time_budget=time_budget, amp=amp, device=device, workers=workers, threads=threads, seed=seed)
    result = distill(t, s, cfg, log=console.print)
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); best val mIoU {result['best_miou']:.4f}; "
                  f"weights in {out / 'best.safetensors'}")


def register(app: typer.Typer) -> None:
    app.command("distill")(distill_command)
