"""Turn a finished distillation run of a pruned student into a bundled model: fp16 safetensors, verified
ONNX, model card with numbers measured on the files being committed.

    python models/bundle_pruned.py runs/distill-b0-30 --name camvid-b0-p30 --data ../shared/data/camvid

The pruning recipe is read from the checkpoint's own metadata (``segrt prune`` records it there) and
from the ``.prune_state.json`` next to the student it was distilled from; latency is measured against
the bundled reference model in one interleaved loop, so machine load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bundle import HERE, cpu_name

from segrt.export.model.checkpoints import load_checkpoint, save_checkpoint
from segrt.export.model.torch_predict import TorchPredictor
from segrt.export.onnx_export import export_onnx
from segrt.export.passes.macs import count_macs
from segrt.runtime.datasets import open_dataset
from segrt.runtime.engine import Engine
from segrt.runtime.evaluate import evaluate


def onnx_params(path: Path) -> int:
    import numpy as np
    import onnx

    proto = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def repo_relative(value):
    """``value`` with every absolute path made relative to the repository: a committed checkpoint must not name
    the folders of the machine that made it (runs usually live next to the repository, so ``../runs/...``)."""
    if isinstance(value, dict):
        return {k: repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.relpath(value, HERE.parent)
    return value


def interleaved_latency(engines: dict[str, Engine], frame, rounds: int = 20) -> dict[str, float]:
    """p50 ms of Engine.infer per model, alternating models every call (load from other jobs hits all alike)."""
    times: dict[str, list[float]] = {k: [] for k in engines}
    for e in engines.values():
        for _ in range(3):
            e.infer(frame)
    for i in range(rounds):
        for name in list(engines) if i % 2 == 0 else list(engines)[::-1]:
            t = time.perf_counter()
            engines[name].infer(frame)
            times[name].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="segrt distill run folder (best.safetensors, best.json, distill_state.pt)")
    ap.add_argument("--name", default="camvid-b0-p30")
    ap.add_argument("--reference", default="camvid-b0", help="bundled teacher and reference (for ratios)")
    ap.add_argument("--source", default=None,
                    help="bundled model the student was pruned from, when not the reference (a second pruning of an "
                    "already distilled student, e.g. to align its widths)")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="camvid")
    ap.add_argument("--limit", type=int, default=None, help="smoke run: evaluate on the first N val images only")
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where the bundled files go (default: models/)")
    args = ap.parse_args()
    out = args.out_dir

    state = torch.load(args.run / "distill_state.pt", map_location="cpu", weights_only=True)
    cfg = json.loads((args.run / "config.json").read_text())
    best = json.loads((args.run / "best.json").read_text())
    loaded = load_checkpoint(args.run / "best.safetensors")
    extra = loaded.metadata.extra
    pruning, distillation = json.loads(extra["pruning"]), json.loads(extra["distillation"])
    student = Path(distillation["student"])
    prune_state = student.with_name(student.name + ".prune_state.json")
    prune_cfg = json.loads(prune_state.read_text())["config"] if prune_state.exists() else {}

    for key, value in extra.items():  # the recorded run folders, relative to the repository like the commands
        if isinstance(value, str) and value.startswith("{"):
            extra[key] = json.dumps(repo_relative(json.loads(value)))
    ckpt = out / f"{args.name}.safetensors"
    save_checkpoint(loaded.model, loaded.metadata, ckpt, dtype=torch.float16)
    bundled = load_checkpoint(ckpt)
    size = tuple(bundled.metadata.input_size)
    val = open_dataset(args.data, args.format, "val")
    torch_metrics = evaluate(
        TorchPredictor(bundled.model, bundled.metadata), val, limit=args.limit, description="eval PyTorch"
    )
    onnx_path = out / f"{args.name}.onnx"
    # The deploy form: uint8 frames in, masks out, any frame size and batch (models/deploy_form.py).
    result = export_onnx(bundled.model, bundled.metadata, onnx_path, size=size, form="frame", dynamic_batch=True)
    engine = Engine(onnx_path)
    onnx_metrics = evaluate(engine.infer, val, limit=args.limit, description="eval ONNX")

    ref_onnx = HERE / f"{args.reference}.onnx"
    ref_eval = json.loads((HERE / f"{args.reference}.eval.json").read_text())["pytorch"]
    macs, ref_macs = count_macs(onnx_path).gmacs, count_macs(ref_onnx).gmacs
    params, ref_params = onnx_params(onnx_path), onnx_params(ref_onnx)
    latency = interleaved_latency({args.name: engine, args.reference: Engine(ref_onnx)}, val[0][0])

    rows = "\n".join(
        f"| {n} | {v:.4f} | {onnx_metrics.per_class_iou[n]:.4f} | {ref_eval['per_class_iou'][n]:.4f} |"
        for n, v in torch_metrics.per_class_iou.items()
    )
    c = bundled.model.config
    source = args.source or args.reference
    min_keep = prune_cfg.get("min_keep")
    prune_cmd = (
        f"segrt prune models/{source}.safetensors --flops {pruning['flops']} --data ../shared/data/camvid "
        f"-o b0-p.safetensors --rounds {prune_cfg.get('rounds', '?')} --steps {prune_cfg.get('steps', '?')} "
        f"--align {pruning.get('align', 1)}" + (f" --min-keep {min_keep}" if min_keep not in (None, 0.125) else "")
    )
    origin = (f"`{args.reference}` pruned to {100 * macs / ref_macs:.1f}% of its MACs" if source == args.reference else
              f"`{source}` (itself a pruned, distilled `{args.reference}`) pruned again to "
              f"{100 * pruning['gmacs'] / pruning['source_gmacs']:.0f}% of its MACs with widths aligned to "
              f"{pruning.get('align', 1)} channels ({100 * macs / ref_macs:.1f}% of `{args.reference}`'s)")
    distill_cmd = (
        f"segrt distill --teacher models/{args.reference}.safetensors --student b0-p.safetensors "
        f"--data ../shared/data/camvid -o runs/distill \\\n  --iterations {cfg['iterations']} --stage1 {cfg['stage1']} "
        f"--lr {cfg['lr']} --val-every {cfg['val_every']}"
        + (f" --aspect {cfg['aspect'][0]:g}:{cfg['aspect'][1]:g}" if tuple(cfg.get("aspect", (1, 1))) != (1, 1) else "")
    )
    card = f"""# {args.name}

{origin} by segrt's multi-task channel
pruning (segmentation + image-level class-presence importance; Mix-FFN hidden channels, attention heads and
q/k channels, decoder channels removed: a smaller dense model, not masks), then distilled from `{args.reference}`
(TransKD-style: CSF feature maps + patch-embedding alignment in stage 1, logit KD from iteration
{int(cfg["stage1"] * cfg["iterations"])} on). Loads from its checkpoint alone; `Engine("{args.name}")` runs the ONNX.

| | `{args.name}` | `{args.reference}` |
|---|---|---|
| GMACs (exported ONNX, {size[0]}x{size[1]}) | {macs:.3f} ({100 * macs / ref_macs:.1f}%) | {ref_macs:.3f} |
| parameters (ONNX initializers) | {params / 1e6:.2f} M ({100 * params / ref_params:.1f}%) | {ref_params / 1e6:.2f} M |
| val mIoU (PyTorch, fp16 weights) | **{torch_metrics.miou:.4f}** | {ref_eval["miou"]:.4f} |
| val mIoU (ONNX via `Engine`) | {onnx_metrics.miou:.4f} | |
| val pixel accuracy | {torch_metrics.pixel_accuracy:.4f} | {ref_eval["pixel_accuracy"]:.4f} |
| Engine.infer p50 (480x360 frame, interleaved, same run) | {latency[args.name]:.1f} ms ({latency[args.reference] / latency[args.name]:.2f}x faster) | {latency[args.reference]:.1f} ms |

| | |
|---|---|
| architecture | SegFormer MiT-{c.variant.upper()} widths {list(c.widths)}, pruned: MLP hidden {c.mlp_hidden}, attention q/k dims {c.attn_dims}, heads {c.block_heads}, decoder {c.decoder_dim} |
| files | `{ckpt.name}` (fp16 weights + config + metadata incl. the pruning plan), `{onnx_path.name}` (opset 17, fp32, decoder folded) |
| pruning | {pruning["gmacs"]:.3f} of `{source}`'s {pruning["source_gmacs"]:.3f} GMACs (folded graph, {pruning["size"][0]}x{pruning["size"][1]}), widths aligned to {pruning.get("align", 1)}, {prune_cfg.get("rounds", "?")} rounds x {prune_cfg.get("steps", "?")} scoring batches |
| distillation | {state["iteration"]} of {cfg["iterations"]} iterations x batch {cfg["batch_size"]}, AdamW lr {cfg["lr"]}, stage 1 (features) {cfg["stage1"]:.0%}; best val checkpoint at iteration {best["iteration"]} (validated every {cfg["val_every"]}) |
| wall time | distillation {float(state["elapsed"]) / 60:.0f} min on {cpu_name()} ({cfg["threads"]} thread(s), bf16 autocast), shared with other work |
| export check | max relative error vs PyTorch {result.max_rel_error:.2e} on {result.images} real frames |

Made with (resumable; rerun the same command to continue):

```bash
{prune_cmd}
{distill_cmd}
```

Per-class IoU on CamVid val ({torch_metrics.images} images):

| class | IoU (PyTorch) | IoU (ONNX via Engine) | `{args.reference}` IoU |
|---|---|---|---|
{rows}

Reproduce: `segrt eval {args.name} --data ../shared/data/camvid --format camvid --split val --json r.json`.
"""
    (out / f"{args.name}.md").write_text(card)
    (out / f"{args.name}.eval.json").write_text(
        json.dumps(
            {
                "pytorch": torch_metrics.to_dict(),
                "onnx": onnx_metrics.to_dict(),
                "export_max_rel_error": result.max_rel_error,
                "gmacs": macs,
                "reference_gmacs": ref_macs,
                "params": params,
                "reference_params": ref_params,
                "engine_latency_ms": latency,
                "distill_iterations": int(state["iteration"]),
                "best_iteration": best["iteration"],
            },
            indent=2,
        )
    )
    print(card)


if __name__ == "__main__":
    main()
