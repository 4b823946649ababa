"""Train a SegFormer on any supported dataset, resumable to the iteration.

AdamW, linear warm-up then poly decay, random scale/crop/flip/photometric augmentation, plain,
class-balanced or OHEM cross-entropy, periodic validation with the shared metric code, and a time
budget that stops cleanly with a checkpoint so a run can span machine sessions.

Resumption is exact: the sample order and every augmentation draw are functions of
(seed, epoch, index), and the optimiser, schedule and torch RNG states are checkpointed. The loop itself
(resume, validation, best checkpoint, time budget) is :mod:`.loop`, shared with distill and prune; this
module supplies the step, the model and the helpers the other trainers reuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segrt.export.model.checkpoints import save_checkpoint
from segrt.export.model.segformer import SegFormer, SegFormerConfig
from segrt.export.model.torch_predict import TorchPredictor
from segrt.export.training.augment import AugmentConfig, augment
from segrt.export.training.loop import Job, TorchStateFile, Validation, run_loop
from segrt.runtime.datasets import IGNORE, SegDataset, open_dataset
from segrt.runtime.evaluate import evaluate
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.metrics import SegMetrics


@dataclass
class TrainConfig:
    data: str
    format: str = "camvid"
    variant: str = "b0"
    out: str = "runs/train"
    iterations: int = 4000
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.01
    warmup: int = 200
    poly_power: float = 1.0
    loss: str = "balanced"  # "ce", "balanced" or "ohem"
    drop_path: float = 0.1
    base_size: tuple[int, int] = (384, 512)
    crop: tuple[int, int] = (320, 320)
    scale: tuple[float, float] = (0.75, 1.5)
    val_every: int = 250
    val_limit: int | None = None
    seed: int = 0
    workers: int = 1
    amp: str = "auto"  # "auto" (bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA), "off"
    time_budget: float | None = None  # seconds; stop with a checkpoint when exceeded
    device: str = "auto"
    threads: int | None = None
    extra: dict = field(default_factory=dict)


class TrainSamples(Dataset):
    """Global sample k -> (epoch, position) -> augmented crop, deterministic in (seed, epoch, index)."""

    def __init__(self, data: SegDataset, aug: AugmentConfig, seed: int, mean, std):
        self.data, self.aug, self.seed = data, aug, seed
        self.scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1)
        self.offset = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1)

    def index(self, k: int) -> tuple[int, int]:
        epoch, pos = divmod(k, len(self.data))
        perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.data))
        return epoch, int(perm[pos])

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, k: int):
        epoch, i = self.index(k)
        img, label = self.data[i]
        img, label = augment(img, label, self.aug, np.random.default_rng((self.seed, epoch, i)))
        x = img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) * self.scale + self.offset
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(label.astype(np.int64))


def class_weights(data: SegDataset, n: int) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus), clipped so rare classes do not dominate."""
    counts = np.zeros(len(data.classes), np.float64)
    for i in range(min(n, len(data))):
        lab = data.read_label(i)
        counts += np.bincount(lab[lab != IGNORE].ravel(), minlength=len(data.classes))[: len(data.classes)]
    freq = counts / max(counts.sum(), 1)
    w = np.where(freq > 0, np.median(freq[freq > 0]) / np.maximum(freq, 1e-12), 1.0)
    return torch.tensor(np.clip(w, 0.2, 5.0), dtype=torch.float32)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, weights: torch.Tensor | None) -> torch.Tensor:
    logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    if kind == "ohem":
        # Online hard example mining: the hardest pixels (at least 100k, or all with p < 0.7).
        pix = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none").flatten()
        valid = target.flatten() != IGNORE
        pix = pix[valid]
        if pix.numel() == 0:
            return logits.sum() * 0
        keep = max(min(100_000, pix.numel()), int((pix > -math.log(0.7)).sum()))
        return pix.topk(min(keep, pix.numel())).values.mean()
    return F.cross_entropy(logits, target, weight=weights if kind == "balanced" else None, ignore_index=IGNORE)


def lr_at(it: int, cfg: TrainConfig) -> float:
    if it < cfg.warmup:
        return cfg.lr * (0.1 + 0.9 * it / cfg.warmup)
    frac = (it - cfg.warmup) / max(cfg.iterations - cfg.warmup, 1)
    return cfg.lr * max(1.0 - frac, 0.0) ** cfg.poly_power


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


def metadata_for(data: SegDataset, cfg: TrainConfig) -> ModelMetadata:
    from segrt import __version__

    return ModelMetadata(classes=list(data.classes), palette=list(data.palette), input_size=tuple(cfg.base_size),
                         segrt_version=__version__, source=f"segrt train {data.name}",
                         extra={"train_config": json.dumps(asdict(cfg), default=str)})


def adamw(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
          lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and norms; a group per learning-rate scale (``lr_scale(name)``,
    kept in the group as ``"lr_scale"`` for :func:`set_lr`), decayed before non-decayed within a scale."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in named:
        groups.setdefault((lr_scale(name) if lr_scale else 1.0, p.ndim > 1), []).append(p)
    order = sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    return torch.optim.AdamW([{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
                              for (scale, decays), ps in order], lr=lr)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def update(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sample_loader(samples: TrainSamples, batch_size: int, start: int, iterations: int, workers: int,
                  seed: int) -> DataLoader:
    """Batches for iterations ``start`` .. ``iterations`` - 1 (global sample k = iteration x batch + i)."""
    # A private generator: the loader's worker seeding must not draw from the global RNG that drop-path
    # uses, or a resumed run would diverge from an uninterrupted one.
    return DataLoader(samples, batch_size=batch_size, sampler=range(start * batch_size, iterations * batch_size),
                      num_workers=workers, persistent_workers=False, drop_last=True,
                      generator=torch.Generator().manual_seed(seed))


def evaluator(model: SegFormer, meta: ModelMetadata, val_set: SegDataset, limit: int | None, device: torch.device,
              size: tuple[int, int] | None = None) -> Callable[[], SegMetrics]:
    """Validation for the loop: the predictor switches the model to eval mode; training mode comes back after."""
    def run() -> SegMetrics:
        predictor = TorchPredictor(model, meta, size=size, device=device)
        metrics = evaluate(predictor, val_set, limit=limit, show_progress=False)
        model.train()
        return metrics

    return run


def start_run(cfg: TrainConfig | Any) -> tuple[Path, torch.device]:
    """The run folder (created) and the device; the torch thread count set if the config names one."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return out, pick_device(cfg.device)


def train(cfg: TrainConfig, log=print) -> dict:
    out, device = start_run(cfg)
    train_set = open_dataset(cfg.data, cfg.format, "train")
    val_set = open_dataset(cfg.data, cfg.format, "val")
    meta = metadata_for(train_set, cfg)
    torch.manual_seed(cfg.seed)
    model = SegFormer(SegFormerConfig.from_variant(cfg.variant, len(train_set.classes)), cfg.drop_path).to(device)
    opt = adamw(model.named_parameters(), cfg.lr, cfg.weight_decay)
    weights = class_weights(train_set, len(train_set)).to(device) if cfg.loss == "balanced" else None
    samples = TrainSamples(train_set, AugmentConfig(tuple(cfg.base_size), tuple(cfg.crop), tuple(cfg.scale)),
                           cfg.seed, meta.mean, meta.std)
    dtype = amp_dtype(cfg, device)

    def step(it: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        set_lr(opt, lr_at(it, cfg))
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = seg_loss(logits, y, cfg.loss, weights)
        update(opt, loss)
        return {"loss": loss.item(), "lr": lr_at(it, cfg)}

    def load_state(state: dict) -> None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])

    job = Job("train", TorchStateFile(out / "train_state.pt"),
              state=lambda: {"model": model.state_dict(), "optimizer": opt.state_dict()}, load_state=load_state,
              batches=lambda start: sample_loader(samples, cfg.batch_size, start, cfg.iterations, cfg.workers,
                                                  cfg.seed),
              step=step,
              validation=Validation(evaluator(model, meta, val_set, cfg.val_limit, device),
                                    save_model=lambda path: save_checkpoint(model, meta, path)),
              out=out, config=cfg)
    model.train()
    return run_loop(cfg, job, log)
