"""Gating recipes: a gated student for distillation, its losses, calibration images, and the verified exports."""

from __future__ import annotations

import copy
import json

import torch

from segrt.export.loading import load_model
from segrt.export.methods.gating.model import (
    EXPORT_MODES,
    GATING_KEY,
    GatingConfig,
    attach_gates,
    calibrate_gates,
    frames_to_batches,
    freeze_gates,
    gated_blocks,
    set_mode,
    sparsity_loss,
)
from segrt.export.model.checkpoints import LoadedModel
from segrt.export.model.segformer import SegFormer
from segrt.export.onnx_export import ExportResult, export_onnx
from segrt.export.training.distill import DistillHooks
from segrt.runtime.datasets import open_dataset
from segrt.runtime.errors import ConfigError

# ----------------------------------------------------------------------------- training (two-stage KD)


def gated_student(teacher_spec: str, cfg: GatingConfig, calibration: list[torch.Tensor] | None = None) -> LoadedModel:
    """A fresh copy of the teacher with gates attached (calibrated on ``calibration`` batches if given),
    its metadata carrying the gating config so every checkpoint the trainer writes reloads on its own."""
    student = load_model(teacher_spec)
    student.model = attach_gates(student.model, cfg)
    if calibration:
        calibrate_gates(student.model, calibration, cfg.keep_ratio)
    student.metadata.extra = {**student.metadata.extra, GATING_KEY: cfg.to_json()}
    student.source = f"gated({cfg.keep_ratio}):{student.source}"
    return student


def gating_hooks(keep_ratio: float, sparsity_weight: float, gate_lr_scale: float) -> DistillHooks:
    """Distillation hooks: the keep-ratio loss on the student's gates, and a larger learning rate for the
    gates (new parameters) than for the pretrained weights they gate."""
    return DistillHooks(losses=lambda model: {"sparsity": sparsity_weight * sparsity_loss(model, keep_ratio)},
                        lr_scale=lambda name: gate_lr_scale if ".mlp.gate." in name else 1.0)


def calibration_batches(data: str, fmt: str, images: int, size: tuple[int, int], mean, std) -> list[torch.Tensor]:
    """The first ``images`` training images at the model's input size (real statistics for the gate start)."""
    train_set = open_dataset(data, fmt, "train")
    step = max(1, len(train_set) // max(images, 1))
    frames = [train_set.read_image(i) for i in range(0, len(train_set), step)][:images]
    return frames_to_batches(frames, size, mean, std)


# ----------------------------------------------------------------------------- export


def export_gated(model: SegFormer, metadata, out, mode: str = "topk", size: tuple[int, int] = (512, 512),
                 keep_ratio: float | None = None, threshold: float | None = None,
                 calibration: list[torch.Tensor] | None = None, align: int = 1, **export_options) -> ExportResult:
    """Export a gated model with segrt's verified exporter (numerically checked against the PyTorch model it
    exports). ``topk``: static shapes, k = keep ratio x hidden per block; ``threshold``: the data-dependent
    variant for ONNX Runtime, batch 1; ``static``: the gates frozen on ``calibration`` batches into a smaller
    dense model (:func:`freeze_gates`, same k per block as topk). ``align``: every k rounded to a multiple of
    it (topk and static). Returns :class:`ExportResult`."""
    if mode not in EXPORT_MODES:
        raise ConfigError(f"gated export mode {mode!r}; expected one of {EXPORT_MODES}")
    if mode == "static":
        if not calibration:
            raise ConfigError("the static (frozen-gate) export needs calibration images (training images, not val)")
        gated = set_mode(copy.deepcopy(model).eval(), "mask", keep_ratio=keep_ratio, align=align)
        frozen = freeze_gates(gated, calibration)
        meta = copy.deepcopy(metadata)
        meta.extra = {k: v for k, v in meta.extra.items() if k != GATING_KEY}
        kept = [k for stage in frozen.config.mlp_hidden or [] for k in stage]
        meta.extra["gating_export"] = json.dumps({"mode": "static", "kept": kept,
                                                  "calibration_images": sum(x.shape[0] for x in calibration)})
        return export_onnx(frozen, meta, out, size=size, dynamic=False, **export_options)
    gated = set_mode(copy.deepcopy(model).eval(), mode, threshold=threshold, keep_ratio=keep_ratio, align=align)
    blocks = gated_blocks(gated)
    desc = ({"mode": mode, "kept": [b.k for b in blocks]} if mode == "topk"
            else {"mode": mode, "threshold": blocks[0].threshold})
    meta = copy.deepcopy(metadata)
    meta.extra = {**meta.extra, "gating_export": json.dumps(desc)}
    return export_onnx(gated, meta, out, size=size, dynamic=False, **export_options)
