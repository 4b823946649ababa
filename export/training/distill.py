"""Student-teacher distillation for SegFormers: recover a pruned model from its unpruned teacher, or
train a small model from a larger one. Resumable to the iteration, with a time budget (the shared
:mod:`.loop`; this module supplies the step). Gate training and exit-head training run through
:func:`distill` with :class:`DistillHooks`.

Losses (TransKD, Liu et al. 2023; two-stage schedule after DynaSegFormer, Bai et al. 2023):
- logit KD: pixel-wise KL(teacher || student) of temperature-softened class distributions.
- feature maps across stages with channel attention fusion (CSF): the student's stage outputs are
  aligned to the teacher's widths and fused deep-to-shallow, each stage selecting per channel how much
  of the deeper context to take in; the fused maps are compared with the teacher's stage outputs by the
  hierarchical context loss (MSE at full resolution and pooled to 4x4, 2x2, 1x1).
- patch-embedding alignment (PEA): each stage's patch embeddings are projected to the teacher's width
  and matched channel-wise: softmax over tokens per channel, KL to the teacher's (channel-wise KD).
- optional embedding assistant: a learned map of the teacher's embeddings into the student's width
  that the student's own embeddings are matched against (a bridge when widths differ a lot).

Alignment layers start as the identity when student and teacher widths agree (always the case for a
pruned student: pruning keeps stage widths) and the fusion's context path starts at zero, so every
distillation loss is exactly zero when the student reproduces the teacher.

Two stages: for the first ``stage1`` fraction of iterations the student learns from the labels plus
the teacher's features and embeddings (re-seating the pruned layers), then from the labels plus the
teacher's logits (with the feature losses scaled by ``stage2_features``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.model.checkpoints import LoadedModel, save_checkpoint
from segrt.export.model.segformer import SegFormer
from segrt.export.training.augment import AugmentConfig
from segrt.export.training.loop import Job, TorchStateFile, Validation, run_loop
from segrt.export.training.train import (
    TrainSamples,
    adamw,
    amp_dtype,
    class_weights,
    evaluator,
    lr_at,
    sample_loader,
    seg_loss,
    set_lr,
    start_run,
    update,
)
from segrt.runtime.datasets import open_dataset
from segrt.runtime.errors import ConfigError


@dataclass
class DistillConfig:
    data: str
    format: str = "camvid"
    out: str = "runs/distill"
    iterations: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup: int = 50
    poly_power: float = 1.0
    loss: str = "balanced"
    crop: tuple[int, int] = (320, 320)
    scale: tuple[float, float] = (0.75, 1.5)
    aspect: tuple[float, float] = (1.0, 1.0)  # height/width stretch range (AugmentConfig.aspect)
    base_size: tuple[int, int] | None = None  # default: the teacher's input size
    val_every: int = 250
    val_limit: int | None = None
    seed: int = 0
    workers: int = 1
    amp: str = "auto"
    time_budget: float | None = None
    device: str = "auto"
    threads: int | None = None
    # distillation
    temperature: float = 1.0
    kd_weight: float = 1.0
    feature_weight: float = 1.0
    embed_weight: float = 1.0
    embed_temperature: float = 1.0
    assistant: bool = False
    stage1: float = 0.3  # fraction of iterations of feature-level distillation before logit KD
    stage2_features: float = 0.2
    extra: dict = field(default_factory=dict)


@dataclass
class DistillHooks:
    """Extensions for methods trained by distillation (neuron gates, auxiliary heads) without a copy of the
    loop: ``losses(student)`` returns extra weighted loss terms after each student forward (they are added
    to the loss and shown in the progress line); ``lr_scale(name)`` is a learning-rate multiplier per
    student parameter name (new, randomly initialised parts usually need a larger one)."""

    losses: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    lr_scale: Callable[[str], float] | None = None


def identity_or_random(conv: nn.Module) -> nn.Module:
    """1x1 conv / Linear from C to C starts as the identity (so identical features give zero loss)."""
    w = conv.weight
    if w.shape[0] == w.shape[1]:
        with torch.no_grad():
            w.zero_()
            w.view(w.shape[0], w.shape[1], -1)[:, :, 0].copy_(torch.eye(w.shape[0]))
            if conv.bias is not None:
                conv.bias.zero_()
    return conv


class CrossSelectiveFusion(nn.Module):
    """Align student stage maps to the teacher's widths and fuse them deep-to-shallow with per-channel
    attention that selects how much deeper context each stage takes in (TransKD's CSF)."""

    def __init__(self, student_widths: tuple[int, ...], teacher_widths: tuple[int, ...], reduce: int = 4):
        super().__init__()
        n = len(teacher_widths)
        pairs = list(zip(student_widths, teacher_widths))
        self.align = nn.ModuleList(identity_or_random(nn.Conv2d(cs, ct, 1)) for cs, ct in pairs)
        self.context = nn.ModuleList(nn.Conv2d(teacher_widths[i + 1], teacher_widths[i], 1) for i in range(n - 1))
        for conv in self.context:  # context starts silent: fused == aligned student map
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.select = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(c // reduce, 8), 1), nn.ReLU(),
                          nn.Conv2d(max(c // reduce, 8), c, 1))
            for c in teacher_widths[:-1])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(feats)
        fused: list[torch.Tensor] = [self.align[-1](feats[-1])]
        for i in range(n - 2, -1, -1):
            x = self.align[i](feats[i])
            y = F.interpolate(self.context[i](fused[0]), size=x.shape[-2:], mode="bilinear", align_corners=False)
            gate = torch.sigmoid(self.select[i](x + y))
            fused.insert(0, x + gate * y)
        return fused


def hierarchical_context_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """MSE at full resolution plus pooled 4x4, 2x2, 1x1 context with halving weights, per stage."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher):
        fs, ft = fs.float(), ft.float()
        loss, weight, norm = F.mse_loss(fs, ft), 1.0, 1.0
        for cells in (4, 2, 1):
            if cells >= fs.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, cells), F.adaptive_avg_pool2d(ft, cells))
            norm += weight
        total = total + loss / norm
    return total


def channel_distribution_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B, N, C) embeddings: each channel as a distribution over the N tokens; KL(teacher || student)."""
    s = F.log_softmax(student.float().transpose(1, 2) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().transpose(1, 2) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="sum") / (s.shape[0] * s.shape[1]) * temperature**2


def logit_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Pixel-wise KL(teacher || student) over classes, averaged over pixels, times T^2."""
    if student.shape[-2:] != teacher.shape[-2:]:
        student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
    s = F.log_softmax(student.float() / temperature, dim=1)
    t = F.log_softmax(teacher.float() / temperature, dim=1)
    pixels = s.shape[0] * s.shape[2] * s.shape[3]
    return F.kl_div(s, t, log_target=True, reduction="sum") / pixels * temperature**2


class Distiller(nn.Module):
    """Everything trainable besides the student: CSF, PEA projections, optional embedding assistant."""

    def __init__(self, student_widths: tuple[int, ...], teacher_widths: tuple[int, ...], assistant: bool = False):
        super().__init__()
        if len(student_widths) != len(teacher_widths):
            raise ConfigError(f"student has {len(student_widths)} stages, teacher {len(teacher_widths)}")
        self.csf = CrossSelectiveFusion(student_widths, teacher_widths)
        pairs = list(zip(student_widths, teacher_widths))
        self.pea = nn.ModuleList(identity_or_random(nn.Linear(cs, ct)) for cs, ct in pairs)
        self.assistant = (nn.ModuleList(identity_or_random(nn.Linear(ct, cs)) for cs, ct in pairs)
                          if assistant else None)

    def losses(self, student: dict, teacher: dict, temperature: float = 1.0,
               embed_temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """``student``/``teacher``: {"logits", "features" (stage maps), "embeddings" (B, N, C per stage)}."""
        out = {
            "kd": logit_kd_loss(student["logits"], teacher["logits"], temperature),
            "features": hierarchical_context_loss(self.csf(student["features"]), teacher["features"]),
            "embeddings": sum(channel_distribution_loss(proj(s), t, embed_temperature)
                              for proj, s, t in zip(self.pea, student["embeddings"], teacher["embeddings"])),
        }
        if self.assistant is not None:
            out["assistant"] = sum(
                channel_distribution_loss(s, bridge(t), embed_temperature)
                for bridge, s, t in zip(self.assistant, student["embeddings"], teacher["embeddings"]))
        return out


def forward_with_features(model: SegFormer, x: torch.Tensor) -> dict:
    """Logits plus every stage's output map and patch embeddings, in one forward pass."""
    embeds: list[torch.Tensor] = []
    hooks = [stage.patch_embeddings.register_forward_hook(lambda m, a, out: embeds.append(out[0]))
             for stage in model.encoder.stages]
    try:
        feats = model.encoder(x)
        logits = model.decode_head(feats)
    finally:
        for h in hooks:
            h.remove()
    return {"logits": logits, "features": feats, "embeddings": embeds}


def stage_weights(it: int, cfg: DistillConfig) -> dict[str, float]:
    """Loss weights at iteration ``it`` of the two-stage schedule."""
    if it < int(cfg.stage1 * cfg.iterations):
        return {"kd": 0.0, "features": cfg.feature_weight, "embeddings": cfg.embed_weight,
                "assistant": cfg.embed_weight}
    f = cfg.stage2_features
    return {"kd": cfg.kd_weight, "features": f * cfg.feature_weight, "embeddings": f * cfg.embed_weight,
            "assistant": f * cfg.embed_weight}


def distill(teacher: LoadedModel, student: LoadedModel, cfg: DistillConfig, log=print,
            hooks: DistillHooks | None = None) -> dict:
    out, device = start_run(cfg)
    t_model, s_model = teacher.model.eval().to(device), student.model.to(device)
    for p in t_model.parameters():
        p.requires_grad_(False)
    train_set = open_dataset(cfg.data, cfg.format, "train")
    val_set = open_dataset(cfg.data, cfg.format, "val")
    check_classes(t_model, s_model, len(train_set.classes))
    meta = student_metadata(teacher, student, cfg)
    base_size = tuple(cfg.base_size or teacher.metadata.input_size or (512, 512))
    torch.manual_seed(cfg.seed)  # adapter init and dropout: a resumed run must replay the same draws
    distiller = Distiller(s_model.config.widths, t_model.config.widths, cfg.assistant).to(device)
    hooks = hooks or DistillHooks()
    named = list(s_model.named_parameters()) + [("distiller." + n, p) for n, p in distiller.named_parameters()]
    opt = adamw(named, cfg.lr, cfg.weight_decay, hooks.lr_scale)
    weights = class_weights(train_set, len(train_set)).to(device) if cfg.loss == "balanced" else None
    samples = TrainSamples(train_set, AugmentConfig(base_size, tuple(cfg.crop), tuple(cfg.scale),
                                                          tuple(cfg.aspect)), cfg.seed,
                           meta.mean, meta.std)
    dtype = amp_dtype(cfg, device)

    def step(it: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        set_lr(opt, lr_at(it, cfg))
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            with torch.no_grad():
                t_out = forward_with_features(t_model, x)
            s_out = forward_with_features(s_model, x)
            parts = distiller.losses(s_out, t_out, cfg.temperature, cfg.embed_temperature)
            extra = hooks.losses(s_model) if hooks.losses else {}
        w = stage_weights(it, cfg)
        seg = seg_loss(s_out["logits"], y, cfg.loss, weights)
        update(opt, seg + sum(w[k] * v for k, v in parts.items() if w[k] > 0) + sum(extra.values()))
        return {"seg": seg.item(), **{k: v.item() for k, v in {**parts, **extra}.items()}, "lr": lr_at(it, cfg)}

    def load_state(state: dict) -> None:
        if state["student_sha256"] != student.sha256 or state["teacher_sha256"] != teacher.sha256:
            raise ConfigError(f"{out / 'distill_state.pt'} belongs to a different teacher/student pair; "
                              "use another --out")
        s_model.load_state_dict(state["student"])
        distiller.load_state_dict(state["distiller"])
        opt.load_state_dict(state["optimizer"])

    job = Job("distill", TorchStateFile(out / "distill_state.pt"),
              state=lambda: {"student": s_model.state_dict(), "distiller": distiller.state_dict(),
                             "optimizer": opt.state_dict(), "student_sha256": student.sha256,
                             "teacher_sha256": teacher.sha256},
              load_state=load_state,
              batches=lambda start: sample_loader(samples, cfg.batch_size, start, cfg.iterations, cfg.workers,
                                                  cfg.seed),
              step=step,
              validation=Validation(evaluator(s_model, meta, val_set, cfg.val_limit, device, size=base_size),
                                    save_model=lambda path: save_checkpoint(s_model, meta, path),
                                    keep_last=True, on_stop=True),
              out=out, config=cfg)
    s_model.train()
    distiller.train()
    return run_loop(cfg, job, log)


def check_classes(teacher: SegFormer, student: SegFormer, dataset_classes: int) -> None:
    if teacher.config.num_classes != student.config.num_classes:
        raise ConfigError(f"teacher predicts {teacher.config.num_classes} classes, "
                          f"student {student.config.num_classes}")
    if dataset_classes != student.config.num_classes:
        raise ConfigError(f"dataset has {dataset_classes} classes, models {student.config.num_classes}")


def student_metadata(teacher: LoadedModel, student: LoadedModel, cfg: DistillConfig):
    """The student's metadata, recording its distillation; a random (from-scratch) student has no real
    metadata: it inherits the teacher's classes and sizes."""
    meta = teacher.metadata if student.source.startswith("random:") else student.metadata
    record = {"teacher": teacher.source, "teacher_sha256": teacher.sha256, "student": student.source,
              "config": asdict(cfg)}
    meta.extra = {**meta.extra, "distillation": json.dumps(record, default=str)}
    return meta
