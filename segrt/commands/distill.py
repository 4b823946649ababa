"""`segrt distill --teacher T --student S --data ROOT -o OUT`: student-teacher training, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from segrt.commands import _training as opt
from segrt.commands._args import model_spec, positive


def distill_command(
    teacher: str = typer.Option(..., "--teacher", help="teacher checkpoint or bundled name", callback=model_spec),
    student: str = typer.Option(..., "--student", callback=model_spec,
                                help="student checkpoint (e.g. from `segrt prune`) or random:b0:NUM_CLASSES"),
    data: Path = opt.data_option(),
    out: Path = opt.run_folder_option("runs/distill",
                                      "run folder (best.safetensors, history); resumes if it has state"),
    fmt: str = opt.format_option(),
    iterations: int = opt.iterations_option(2000),
    batch_size: int = opt.batch_size_option(),
    lr: float = opt.lr_option(2e-4),
    crop: str = opt.crop_option(),
    aspect: str = typer.Option("1:1", "--aspect",
                               help="LO:HI range of random height/width stretch factors (log-uniform) applied with "
                                    "the scale augmentation, e.g. 0.75:1.5 for a student that will run on frames "
                                    "squeezed to another aspect ratio than its base size; 1:1 (default) stretches "
                                    "nothing"),
    temperature: float = typer.Option(1.0, "--temperature", help="logit KD temperature", callback=positive),
    kd_weight: float = opt.weight_option("--kd-weight", 1.0, "logit KD weight"),
    feature_weight: float = opt.weight_option("--feature-weight", 1.0, "CSF feature-map loss weight"),
    embed_weight: float = opt.weight_option("--embed-weight", 1.0, "patch-embedding alignment weight"),
    stage1: float = opt.stage1_option(),
    assistant: bool = typer.Option(False, "--assistant", help="add the embedding assistant"),
    val_every: int = opt.val_every_option(),
    time_budget: float = opt.time_budget_option(),
    amp: str = opt.amp_option(),
    device: str = opt.device_option(),
    workers: int = opt.workers_option(),
    threads: int = opt.threads_option(),
    seed: int = opt.seed_option(),
) -> None:
    """Distil a teacher into a student (logit KD, CSF feature maps, patch-embedding alignment; two stages)."""
    from rich.console import Console

    from segrt.export.loading import load_model
    from segrt.export.training.distill import distill

    console = Console()
    cfg = opt.distill_config(data=data, fmt=fmt, out=out, crop=crop, iterations=iterations, batch_size=batch_size,
                             lr=lr, temperature=temperature, kd_weight=kd_weight, feature_weight=feature_weight,
                             embed_weight=embed_weight, stage1=stage1, assistant=assistant, val_every=val_every,
                             time_budget=time_budget, amp=amp, device=device, workers=workers, threads=threads,
                             seed=seed, aspect=parse_aspect(aspect))
    with console.status("loading teacher and student"):
        t, s = load_model(teacher), load_model(student)
    result = distill(t, s, cfg, log=console.print)
    state = "finished" if result["finished"] else "resumable: run the same command again"
    console.print(f"stopped at iteration {result['iteration']} ({state}); best val mIoU {result['best_miou']:.4f}; "
                  f"weights in {out / 'best.safetensors'}")


def parse_aspect(text: str) -> tuple[float, float]:
    """'LO:HI' -> (LO, HI), 0 < LO <= HI; a ConfigError naming the option otherwise."""
    from segrt.runtime.errors import ConfigError

    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--aspect takes LO:HI (e.g. 0.75:1.5), got {text!r}") from None
    if not (0 < lo <= hi < float("inf")):
        raise ConfigError(f"--aspect needs 0 < LO <= HI, got {text!r}")
    return lo, hi


def register(root: typer.Typer) -> None:
    root.command("distill")(distill_command)
