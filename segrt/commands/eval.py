"""`segrt eval MODEL --data ROOT`: mIoU, pixel accuracy and per-class IoU on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from segrt.commands._args import at_least_one, model_spec, output_file, parse_size, size_option
from segrt.commands._training import data_option, format_option


def predictor_for(model: str, backend: str, size: str | None):
    """ONNX files and engines run through Engine; checkpoints (and bundled names) through PyTorch."""
    from segrt.runtime.engine import ENGINE_SUFFIXES, Engine

    if model.endswith(".onnx") or model.endswith(ENGINE_SUFFIXES):
        engine = Engine(model, backend=backend)
        return engine.infer, engine.classes, f"{engine.path} on {engine.backend_name}"
    from segrt.export.loading import load_model
    from segrt.export.model.torch_predict import TorchPredictor

    loaded = load_model(model)
    hw = parse_size(size) if size else loaded.metadata.input_size
    predictor = TorchPredictor(loaded.model, loaded.metadata, size=hw)
    return predictor, loaded.metadata.classes, f"{loaded.source} on PyTorch"


def eval_command(
    model: str = typer.Argument("camvid-b0", help="checkpoint, bundled name, ONNX file or engine",
                                callback=model_spec),
    data: Path = data_option(),
    fmt: str = format_option(),
    split: str = typer.Option("val", "--split"),
    json_out: Path = typer.Option(None, "--json", help="write the metrics as JSON", callback=output_file),
    backend: str = typer.Option("auto", "--backend"),
    size: str = typer.Option(None, "--size", help="input size HxW for checkpoints (default: the model's)",
                             callback=size_option),
    limit: int = typer.Option(None, "--limit", help="only the first N images", callback=at_least_one),
) -> None:
    """Evaluate a model on a dataset split (confusion matrix over the whole split)."""
    from segrt.runtime.datasets import open_dataset
    from segrt.runtime.evaluate import evaluate
    from segrt.runtime.sinks import write_text

    console = Console(soft_wrap=True)
    dataset = open_dataset(data, fmt, split)
    predict, classes, where = predictor_for(model, backend, size)
    if len(classes) != len(dataset.classes):
        from segrt.runtime.errors import ConfigError

        raise ConfigError(f"model has {len(classes)} classes but the {fmt} dataset has {len(dataset.classes)}")
    console.print(f"evaluating {where} on {fmt}/{split} ({len(dataset)} images)")
    metrics = evaluate(predict, dataset, limit=limit)
    table = Table(title=f"{fmt} {split}: mIoU {metrics.miou:.4f}, pixel accuracy {metrics.pixel_accuracy:.4f}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, iou in metrics.per_class_iou.items():
        table.add_row(name, "-" if iou is None else f"{iou:.4f}")
    console.print(table)
    if json_out:
        written = write_text(json_out, json.dumps(metrics.to_dict(), indent=2), "metrics JSON")
        console.print(f"wrote {written}")


def register(root: typer.Typer) -> None:
    root.command("eval")(eval_command)
