"""Write the small committed ONNX models the runtime tests use (tests/fixtures/segformer-tiny.onnx and its frame
form, tests/fixtures/segformer-tiny-frame.onnx).

The runtime's tests must run where torch is not installed (CI runs them once in such an environment), so
their model is a file in the repository rather than an export made at test time. It is a seeded, randomly
initialised SegFormer with B0's structure at a quarter of its widths and one block per stage: every operator
of a real export (overlapping patch embeddings, efficient attention with spatial reduction, Mix-FFN, the
all-MLP decoder, folded), 11 CamVid classes, 256x320 input, verified against PyTorch by segrt's exporter, with
portable ops (`--ops portable`: the graph the ONNX passes' tests start from) at IR 8 (onnxruntime 1.17 reads it).

The frame form (issue 18: uint8 BGR frames of any size in, uint8 masks at the frame's size out, "refine"
post-processing) wraps the same seeded network exported with a dynamic batch, so that tests can batch frames;
it is verified against the reference path (cv2 resize, logits, bilinear upsampling, argmax) on real frames.

    python tools/make_test_model.py            # needs the export extra (torch); writes both files
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from segrt.export.model.segformer import SegFormer, SegFormerConfig
from segrt.export.onnx_export import export_onnx
from segrt.runtime.metadata import ModelMetadata

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "segformer-tiny.onnx"
FRAME_NAME = "segformer-tiny-frame.onnx"


def tiny_segformer(seed: int = 0) -> SegFormer:
    torch.manual_seed(seed)
    config = SegFormerConfig(num_classes=len(CAMVID_CLASSES), widths=(8, 16, 40, 64), depths=(1, 1, 1, 1),
                             heads=(1, 1, 1, 2), decoder_dim=32, variant="tiny")
    model = SegFormer(config).eval()
    # Random BatchNorm statistics, so decoder folding is exercised with non-trivial scales.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT, help="the logits-form model")
    parser.add_argument("--frame-out", type=Path, default=None, help=f"the frame form (default: {FRAME_NAME} "
                                                                      "next to --out)")
    args = parser.parse_args()
    metadata = ModelMetadata(classes=CAMVID_CLASSES, source="tools/make_test_model.py (seed 0, random weights)")
    # portable ops (LayerNormalization, ScatterElements sums): the graph the passes' tests start from
    result = export_onnx(tiny_segformer(), metadata, args.out, size=(256, 320), ops="portable")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB), verified against PyTorch: relative error "
          f"{result.max_rel_error:.1e}, label agreement {result.label_agreement:.2%}")
    frame_out = args.frame_out or args.out.with_name(FRAME_NAME)
    result = export_onnx(tiny_segformer(), metadata, frame_out, size=(256, 320), dynamic_batch=True, form="frame")
    print(f"wrote {frame_out} ({frame_out.stat().st_size / 1e3:.0f} kB), frame form (dynamic batch, any frame size): "
          f"mask agreement with the reference path {result.frame_agreement:.4%}")


if __name__ == "__main__":
    main()
