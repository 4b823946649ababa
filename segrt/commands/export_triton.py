"""`segrt export-triton MODEL -o repo/`: a Triton model repository (config.pbtxt + model) for a production Triton."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from segrt.commands._args import choice, in_range, model_spec


def export_triton_command(
    model: str = typer.Argument("camvid-b0", help="ONNX file, engine or bundled name", callback=model_spec),
    output: Path = typer.Option(..., "--output", "-o", help="model repository folder (made if missing)"),
    name: str = typer.Option(None, help="Triton model name (default: the model's name)"),
    max_batch: int = typer.Option(8, help="max_batch_size where the batch dimension is dynamic",
                                  callback=in_range(0, 4096)),
    instances: int = typer.Option(1, help="model instances (instance_group count)", callback=in_range(1, 64)),
    kind: str = typer.Option("gpu", help="instance kind for ONNX models: gpu or cpu", callback=choice("gpu", "cpu")),
    post: str = typer.Option("dense", help="post-processing of a logits-form ONNX wrapped into the frame form: "
                                            "dense (GPU) or refine (CPU)", callback=choice("dense", "refine")),
    force: bool = typer.Option(False, "--force", help="replace an existing model folder"),
) -> None:
    """Write a Triton model repository: onnxruntime backend for ONNX, tensorrt_plan for engines."""
    from segrt.serving.repository import export_triton

    folder = export_triton(model, output, name=name, max_batch=max_batch, instances=instances, kind=kind,
                           post=post, force=force)
    console = Console()
    console.print(f"wrote {folder} (config.pbtxt, 1/); serve with: tritonserver --model-repository {output}",
                  soft_wrap=True)
    if "dynamic_batching" not in (folder / "config.pbtxt").read_text():
        console.print("note: the model has a fixed batch, so Triton will not batch requests; export it with "
                      "`segrt export --dynamic-batch` for dynamic batching", soft_wrap=True)


def register(root: typer.Typer) -> None:
    root.command("export-triton")(export_triton_command)
