"""Re-export the bundled ONNX models in their deploy form from the bundled checkpoints, and check it.

    python models/deploy_form.py --data ../shared/data/camvid [--names camvid-b0 camvid-b0-p30 camvid-b0-p27]

The deploy form (issue 18) takes the camera's uint8 BGR frame (any size, any batch) and returns the mask:
resize, normalisation, bilinear upsampling and argmax run inside the graph (export/passes/frame_graph.py).
Before a model file is replaced, this checks on CamVid val that the network inside is the one already
bundled (same logits) and that masks and mIoU through ``Engine`` match the previous file's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from segrt.export.model.checkpoints import load_checkpoint
from segrt.export.onnx_export import export_onnx
from segrt.export.passes.frame_graph import network_of
from segrt.runtime.datasets import open_dataset
from segrt.runtime.engine import Engine
from segrt.runtime.evaluate import evaluate
from segrt.runtime.metadata import ModelMetadata

HERE = Path(__file__).resolve().parent
MAX_MIOU_CHANGE = 0.0005  # 0.05 points


def logits_difference(old: Path, new_network: onnx.ModelProto, frames: list[np.ndarray]) -> float:
    """Largest relative difference between the old file's logits and the new file's network, same inputs."""
    import onnxruntime as ort

    from segrt.export.passes.frame_graph import is_frame_form
    from segrt.runtime.preprocess import frames_to_input

    previous = onnx.load(str(old))  # a file already in the deploy form is compared by its network
    previous = network_of(previous) if is_frame_form(previous) else previous
    old_sess = ort.InferenceSession(previous.SerializeToString(), providers=["CPUExecutionProvider"])
    new_sess = ort.InferenceSession(new_network.SerializeToString(), providers=["CPUExecutionProvider"])
    meta = ModelMetadata.from_onnx(old_sess.get_modelmeta().custom_metadata_map)
    worst = 0.0
    for frame in frames:
        x = frames_to_input([frame], meta.input_size, meta.mean, meta.std)
        a = old_sess.run(None, {old_sess.get_inputs()[0].name: x})[0]
        b = new_sess.run(None, {new_sess.get_inputs()[0].name: x})[0]
        worst = max(worst, float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="camvid")
    ap.add_argument("--names", nargs="+", default=["camvid-b0", "camvid-b0-p30", "camvid-b0-p27"])
    args = ap.parse_args()
    val = open_dataset(args.data, args.format, "val")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            old = HERE / f"{name}.onnx"
            kept = Path(tmp) / f"{name}.previous.onnx"
            shutil.copy(old, kept)
            loaded = load_checkpoint(HERE / f"{name}.safetensors")
            size = tuple(loaded.metadata.input_size)
            fresh = Path(tmp) / f"{name}.onnx"
            result = export_onnx(loaded.model, loaded.metadata, fresh, size=size, form="frame", dynamic_batch=True)
            network = network_of(onnx.load(str(fresh)))
            difference = logits_difference(kept, network, [val[i][0] for i in range(8)])
            before = evaluate(Engine(kept).infer, val, description=f"{name} before")
            after = evaluate(Engine(fresh).infer, val, description=f"{name} deploy form")
            change = after.miou - before.miou
            pre = ModelMetadata.from_onnx(onnx.load(str(fresh))).extra.get("pre", "exact")  # the in-graph resize
            report[name] = {"logits_max_rel_difference": difference, "miou_before": before.miou,
                            "miou_after": after.miou, "frame_agreement": result.frame_agreement,
                            "export_max_rel_error": result.max_rel_error, "pre": pre}
            print(name, json.dumps(report[name]))
            if difference > 1e-5 or abs(change) > MAX_MIOU_CHANGE:
                raise SystemExit(f"{name}: the deploy form differs from the bundled model (logits {difference:.2e}, "
                                 f"mIoU {change:+.4f}); {old} left as it was")
            shutil.copy(fresh, old)
    record = HERE / "deploy_form.json"  # the models not converted this time keep their entries
    merged = {**(json.loads(record.read_text()) if record.exists() else {}), **report}
    record.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
