"""DToP recipes: training the exit heads with segrt's distillation loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from segrt.export.loading import load_model
from segrt.export.methods.early_exit.model import AuxHead, make_heads, parse_exit_name, save_heads
from segrt.export.model.checkpoints import save_checkpoint
from segrt.export.model.segformer import SegFormer, tokens_to_grid
from segrt.export.training.distill import DistillHooks, distill, logit_kd_loss
from segrt.runtime.errors import ConfigError

# ----------------------------------------------------------------------------- training


@dataclass
class ExitTrainConfig:
    """Aux heads are trained by segrt's distillation loop (:func:`segrt.export.training.distill.distill`) with the
    model as its own teacher: the heads learn the full model's per-pixel class distribution (KL, so that
    their confidence says how likely the final model agrees), the backbone stays frozen unless
    ``finetune``. Frozen, a token that does not exit gets exactly the original model's features."""

    points: list[str] = field(default_factory=lambda: ["s2b0", "s2b1"])
    hidden: int = 256  # aux head MLP width (0: LayerNorm + Linear)
    finetune: bool = False
    temperature: float = 1.0


def _record_aux(stage_module: nn.Module, block: int, head: AuxHead, store: dict, name: str):
    def keep_tokens(_m, _a, out):
        store[name] = head(out[0] if isinstance(out, tuple) else out)

    target = stage_module.patch_embeddings if block == 0 else stage_module.blocks[block - 1]
    return target.register_forward_hook(keep_tokens)


def exit_hooks(teacher: SegFormer, student: SegFormer, heads: nn.ModuleDict, temperature: float = 1.0):
    """(DistillHooks, handles): the heads' KL losses against the teacher's logits, recorded by forward hooks."""
    store: dict[str, torch.Tensor] = {}
    handles = [teacher.decode_head.register_forward_hook(lambda _m, _a, out: store.__setitem__("teacher", out))]
    for name, head in heads.items():
        stage, block = parse_exit_name(name)
        handles.append(_record_aux(student.encoder.stages[stage], block, head, store, name))

    def losses(_student: nn.Module) -> dict[str, torch.Tensor]:
        target = store["teacher"].detach()
        out = {}
        for name in heads:
            aux = store[name]
            hw = student_grid(aux.shape[1], target.shape[2:], student.config.strides, parse_exit_name(name)[0])
            out[f"aux_{name}"] = logit_kd_loss(tokens_to_grid(aux, *hw), target, temperature)
        return out

    return DistillHooks(losses=losses), handles


def student_grid(n: int, logit_size, strides, stage: int) -> tuple[int, int]:
    """The (h, w) of an exit grid with ``n`` tokens, from the logits' stride-4 size (crop sizes need not divide)."""
    factor = math.prod(strides[1 : stage + 1])
    h = -(-int(logit_size[0]) // factor)
    for cand in (h, h - 1, h + 1):
        if cand > 0 and n % cand == 0:
            return cand, n // cand
    raise ConfigError(f"cannot recover the exit grid of {n} tokens")


def train_exit_heads(model_spec: str, distill_cfg, train_cfg: ExitTrainConfig, log=print) -> dict:
    """Train aux heads for ``model_spec`` with the distillation loop; writes ``<out>/exit_heads.safetensors``."""
    teacher, student = load_model(model_spec), load_model(model_spec)
    heads = make_heads(student.model, train_cfg.points, train_cfg.hidden)
    student.model.exit_heads = heads  # a submodule: the loop's optimiser and resumable state include the heads
    if not train_cfg.finetune:
        for name, p in student.model.named_parameters():
            p.requires_grad_(name.startswith("exit_heads."))
    hooks, handles = exit_hooks(teacher.model, student.model, heads, train_cfg.temperature)
    try:
        result = distill(teacher, student, distill_cfg, log=log, hooks=hooks)
    finally:
        for h in handles:
            h.remove()
    out = Path(distill_cfg.out) / "exit_heads.safetensors"
    save_heads(heads, out, {"source": model_spec, "source_sha256": teacher.sha256, "finetune": train_cfg.finetune,
                            "hidden": train_cfg.hidden,
                            "iterations": result["iteration"]})
    if train_cfg.finetune:
        del student.model.exit_heads
        save_checkpoint(student.model, student.metadata, Path(distill_cfg.out) / "backbone.safetensors")
    return {**result, "heads": str(out)}
