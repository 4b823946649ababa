"""Turn a finished training run into the bundled model: fp16 safetensors, verified ONNX, model card.

    python models/bundle.py runs/camvid-b0 --name camvid-b0 --data ../shared/data/camvid

The card's numbers are measured here, on the files being committed (fp16 weights, exported ONNX).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from segrt.export.model.checkpoints import load_checkpoint, save_checkpoint
from segrt.export.model.torch_predict import TorchPredictor
from segrt.export.onnx_export import export_onnx
from segrt.runtime.datasets import open_dataset
from segrt.runtime.engine import Engine
from segrt.runtime.evaluate import evaluate

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default="camvid-b0")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="camvid")
    args = ap.parse_args()

    state = torch.load(args.run / "train_state.pt", map_location="cpu", weights_only=True)
    cfg = json.loads((args.run / "config.json").read_text())
    best = json.loads((args.run / "best.json").read_text())
    loaded = load_checkpoint(args.run / "best.safetensors")
    ckpt = HERE / f"{args.name}.safetensors"
    save_checkpoint(loaded.model, loaded.metadata, ckpt, dtype=torch.float16)
    bundled = load_checkpoint(ckpt)

    val = open_dataset(args.data, args.format, "val")
    size = tuple(bundled.metadata.input_size)
    torch_metrics = evaluate(TorchPredictor(bundled.model, bundled.metadata), val, description="eval PyTorch")
    onnx_path = HERE / f"{args.name}.onnx"
    # The deploy form: uint8 frames in, masks out, any frame size and batch (models/deploy_form.py).
    result = export_onnx(bundled.model, bundled.metadata, onnx_path, size=size, form="frame", dynamic_batch=True)
    engine = Engine(onnx_path)
    onnx_metrics = evaluate(engine.infer, val, description="eval ONNX")

    frame = val[0][0]
    for _ in range(3):
        engine.infer(frame)
    t = time.perf_counter()
    for _ in range(20):
        engine.infer(frame)
    latency = (time.perf_counter() - t) / 20 * 1000

    rows = "\n".join(
        f"| {n} | {v:.4f} | {onnx_metrics.per_class_iou[n]:.4f} |" for n, v in torch_metrics.per_class_iou.items()
    )
    hours = float(state.get("elapsed", 0.0)) / 3600
    card = f"""# {args.name}

SegFormer-{bundled.model.config.variant.upper()} trained from scratch by segrt on CamVid (SegNet split) train,
367 images, 11 classes (no pretrained weights are reachable where it was trained).

| | |
|---|---|
| architecture | SegFormer MiT-{bundled.model.config.variant.upper()}, all-MLP head (decoder {bundled.model.config.decoder_dim}), {sum(p.numel() for p in bundled.model.parameters()) / 1e6:.2f} M parameters |
| input size | {size[0]}x{size[1]} (HxW); frames are resized to it, masks come back at frame size |
| files | `{ckpt.name}` (fp16 weights + config + metadata), `{onnx_path.name}` (opset 17, IR 8, fp32) |
| training | {state["iteration"]} iterations x batch {cfg["batch_size"]} ({state["iteration"] * cfg["batch_size"] / 367:.0f} epochs), AdamW lr {cfg["lr"]}, poly, {cfg["loss"]} loss, crops {cfg["crop"]}, scale {cfg["scale"]}; best checkpoint at iteration {best["iteration"]} |
| wall time | {hours:.2f} h on {cpu_name()} (2 cores, bf16 autocast), shared with other work |
| val mIoU | **{torch_metrics.miou:.4f}** (PyTorch, fp16 weights); {onnx_metrics.miou:.4f} through `Engine` (ONNX Runtime CPU) |
| val pixel accuracy | {torch_metrics.pixel_accuracy:.4f} |
| export check | max relative error vs PyTorch {result.max_rel_error:.2e} on {result.images} real frames |
| Engine.infer latency | {latency:.1f} ms per 480x360 frame (ONNX Runtime CPU, 2 cores, same run) |

Training command (resumable; rerun the same command to continue):

```bash
segrt train --data ../shared/data/camvid --format camvid --variant {cfg["variant"]} --out runs/camvid-b0 \\
  --iterations {cfg["iterations"]} --batch-size {cfg["batch_size"]} --lr {cfg["lr"]} --loss {cfg["loss"]} \\
  --base-size {cfg["base_size"][0]}x{cfg["base_size"][1]} --crop {cfg["crop"][0]}x{cfg["crop"][1]} --val-every {cfg["val_every"]}
```

Per-class IoU on CamVid val (101 images):

| class | IoU (PyTorch) | IoU (ONNX via Engine) |
|---|---|---|
{rows}

Reproduce: `segrt eval {args.name} --data ../shared/data/camvid --format camvid --split val --json r.json`.
"""
    (HERE / f"{args.name}.md").write_text(card)
    (HERE / f"{args.name}.eval.json").write_text(
        json.dumps(
            {
                "pytorch": torch_metrics.to_dict(),
                "onnx": onnx_metrics.to_dict(),
                "export_max_rel_error": result.max_rel_error,
                "engine_latency_ms": latency,
            },
            indent=2,
        )
    )
    print(card)


if __name__ == "__main__":
    main()
