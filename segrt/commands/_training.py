"""The options every training command shares (`train`, `distill`, `prune`, `gate train`, `exit train`).

One definition per option (flag, help text, range check); a command only picks its default. The
commands that run segrt's distillation loop hand their values to :func:`distill_config`, the one place
that turns them into a ``DistillConfig``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from segrt.commands._args import (
    at_least_one,
    choice,
    existing_folder,
    non_negative,
    option_name,
    output_folder,
    parse_size,
    positive,
    size_option,
    unit_interval,
)
from segrt.runtime.errors import ConfigError

if TYPE_CHECKING:
    from segrt.export.training.distill import DistillConfig

DATASET_FORMATS = ("camvid", "cityscapes", "ade20k", "folder")


def data_option(help: str = "dataset root") -> Any:
    return typer.Option(..., "--data", help=help, callback=existing_folder)


def run_folder_option(default: str, help: str) -> Any:
    return typer.Option(Path(default), "-o", "--out", help=help, callback=output_folder)


def format_option() -> Any:
    return typer.Option("camvid", "--format", help=", ".join(DATASET_FORMATS), callback=choice(*DATASET_FORMATS))


def iterations_option(default: int) -> Any:
    return typer.Option(default, "--iterations", callback=at_least_one)


def batch_size_option(default: int = 8) -> Any:
    return typer.Option(default, "--batch-size", callback=at_least_one)


def lr_option(default: float) -> Any:
    return typer.Option(default, "--lr", help="peak learning rate", callback=positive)


def crop_option(default: str = "320x320", flag: str = "--crop", help: str = "HxW training crop") -> Any:
    return typer.Option(default, flag, help=help, callback=size_option)


def stage1_option() -> Any:
    return typer.Option(0.3, "--stage1", help="fraction of iterations of feature-level KD before logit KD",
                        callback=unit_interval)


def val_every_option(default: int = 250, help: str = "validate every N iterations") -> Any:
    return typer.Option(default, "--val-every", help=help, callback=at_least_one)


def time_budget_option(help: str = "seconds; stop with a checkpoint when exceeded") -> Any:
    return typer.Option(None, "--time-budget", help=help, callback=positive)


def amp_option(help: str = "auto or off") -> Any:
    return typer.Option("auto", "--amp", help=help, callback=choice("auto", "off"))


def _device(param: typer.CallbackParam, value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ConfigError(f"{option_name(param)} {value!r}: expected auto, cpu, cuda or cuda:N")
    return value


def device_option() -> Any:
    return typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N", callback=_device)


def workers_option() -> Any:
    return typer.Option(1, "--workers", help="data loading processes (0: in the training process)",
                        callback=non_negative)


def threads_option() -> Any:
    return typer.Option(None, "--threads", help="PyTorch threads (default: PyTorch's choice)", callback=at_least_one)


def seed_option() -> Any:
    return typer.Option(0, "--seed", callback=non_negative)


def weight_option(flag: str, default: float, help: str) -> Any:
    return typer.Option(default, flag, help=help, callback=non_negative)


def distill_config(*, data: Path, fmt: str, out: Path, crop: str, **values: Any) -> DistillConfig:
    """The DistillConfig of a command: paths as strings, the crop parsed, every other field by its name."""
    from segrt.export.training.distill import DistillConfig

    return DistillConfig(data=str(data), format=fmt, out=str(out), crop=parse_size(crop, "--crop"), **values)
