"""Train a SegFormer on any supported dataset, resumable to the iteration.

AdamW, linear warm-up then poly decay, random scale/crop/flip/photometric augmentation, plain,
class-balanced or OHEM cross-entropy, periodic validation with the shared metric code, and a time
budget that stops cleanly with a checkpoint so a run can span machine sessions.

Resumption is exact: the sample order and every augmentation draw are functions of
(seed, epoch, index), and the optimiser, schedule and torch RNG states are checkpointed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segrt.runtime.datasets import IGNORE, SegDataset, open_dataset
from segrt.runtime.evaluate import evaluate
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.progress import make_progress

from segrt.export.training.augment import AugmentConfig, augment
from segrt.export.model.checkpoints import save_checkpoint
from segrt.export.model.segformer import SegFormer, SegFormerConfig
from segrt.export.model.torch_predict import TorchPredictor


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


def train(cfg: TrainConfig, log=print) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    train_set = open_dataset(cfg.data, cfg.format, "train")
    val_set = open_dataset(cfg.data, cfg.format, "val")
    meta = metadata_for(train_set, cfg)
    torch.manual_seed(cfg.seed)
    model = SegFormer(SegFormerConfig.from_variant(cfg.variant, len(train_set.classes)), cfg.drop_path).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    weights = class_weights(train_set, len(train_set)).to(device) if cfg.loss == "balanced" else None
    state_path = out / "train_state.pt"
    start, best, history = 0, -1.0, []
    elapsed_before = 0.0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start, best = int(state["iteration"]), float(state["best_miou"])
        history = json.loads(state["history"])
        elapsed_before = float(state.get("elapsed", 0.0))
        log(f"resumed from {state_path} at iteration {start} (best mIoU {best:.4f})")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))

    samples = TrainSamples(train_set, AugmentConfig(tuple(cfg.base_size), tuple(cfg.crop), tuple(cfg.scale)),
                           cfg.seed, meta.mean, meta.std)
    sampler = range(start * cfg.batch_size, cfg.iterations * cfg.batch_size)
    # A private generator: the loader's worker seeding must not draw from the global RNG that drop-path
    # uses, or a resumed run would diverge from an uninterrupted one.
    loader = DataLoader(samples, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        persistent_workers=False, drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))
    dtype = amp_dtype(cfg, device)
    t0 = time.time()

    def save_state(it: int) -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                    "iteration": it, "best_miou": best, "history": json.dumps(history),
                    "elapsed": elapsed_before + time.time() - t0}, tmp)
        tmp.replace(state_path)  # atomic: an interruption never leaves a half-written checkpoint

    def validate(it: int) -> float:
        nonlocal best
        model.eval()
        metrics = evaluate(TorchPredictor(model, meta, device=device), val_set, limit=cfg.val_limit, show_progress=False)
        model.train()
        history.append({"iteration": it, "miou": metrics.miou, "pixel_accuracy": metrics.pixel_accuracy,
                        "elapsed": elapsed_before + time.time() - t0})
        if metrics.miou > best:
            best = metrics.miou
            save_checkpoint(model, meta, out / "best.safetensors")
            (out / "best.json").write_text(json.dumps({"iteration": it, **metrics.to_dict()}, indent=2))
        log(f"iter {it}: val mIoU {metrics.miou:.4f} (best {best:.4f}) pixel acc {metrics.pixel_accuracy:.4f}")
        return metrics.miou

    model.train()
    it = start
    stopped_for_budget = False
    with make_progress() as progress:
        task = progress.add_task("train", total=cfg.iterations, completed=start, info="")
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(it, cfg)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = seg_loss(logits, y, cfg.loss, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            progress.update(task, completed=it, info=f"loss {loss.item():.3f} lr {lr_at(it, cfg):.2e}")
            if not progress.console.is_terminal and it % 25 == 0:  # logs and CI have no live bar
                log(f"iter {it}/{cfg.iterations} loss {loss.item():.3f} lr {lr_at(it, cfg):.2e} "
                    f"elapsed {elapsed_before + time.time() - t0:.0f}s")
            if it % cfg.val_every == 0 or it == cfg.iterations:
                validate(it)
                save_state(it)
            if cfg.time_budget is not None and time.time() - t0 > cfg.time_budget:
                save_state(it)
                stopped_for_budget = True
                log(f"time budget reached at iteration {it}; resume with the same command")
                break
    if not stopped_for_budget and (not history or history[-1]["iteration"] != it):
        validate(it)
        save_state(it)
    (out / "history.json").write_text(json.dumps(history, indent=2))
    return {"iteration": it, "best_miou": best, "finished": it >= cfg.iterations, "history": history}
