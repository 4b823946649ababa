"""Dynamic gated Mix-FFN neurons (DynaSegFormer, Bai et al. 2023): compute that follows the input.

A light gate per Mix-FFN reads the block's input tokens (mean-pooled, a two-layer MLP) and scores every
hidden neuron for this image; the low-scoring neurons are skipped. A hidden neuron ``i`` is one row of
``fc1``, one channel of the depth-wise conv and one column of ``fc2``, and nothing else reads it, so
skipping it is exactly multiplying its activation by zero (GELU(0) is never computed; the neuron's
contribution to ``fc2`` is simply absent).

Modes of :class:`GatedMixFFN` (``set_mode``):

- ``open``: the gate is ignored; the block is the unpruned Mix-FFN.
- ``mask`` (training and PyTorch evaluation): every neuron is computed and multiplied by a mask, hard
  ``score > threshold`` in the forward pass and ``sigmoid(score)`` in the backward pass (straight-through),
  so the loss reaches the gate. The fraction kept is recorded for the keep-ratio (sparsity) loss.
- ``topk`` (export, static shapes): TopK over the scores -> Gather of the k rows of ``fc1`` (and bias), k
  depth-wise channels, k columns of ``fc2`` -> MatMul on k neurons only. Every shape is static, TopK's k
  stays below TensorRT's 3840 limit.
- ``threshold`` (export, ONNX Runtime, batch 1): the neurons with ``score > threshold`` (at least one),
  a data-dependent number. Its depth-wise conv runs on the dense channel grid with the skipped channels
  zero (a row Gather, see :mod:`.row_index`; Conv; Gather), because an ONNX Conv's ``group`` must be a constant.

- ``static`` (export): the trained gates frozen into ordinary structured pruning (:func:`freeze_gates`):
  each block keeps the k neurons of highest mean score on training images, as a smaller dense model.
  Not input-adaptive; it is the yardstick that shows what choosing neurons per image costs and gains.

Gated checkpoints are ordinary segrt safetensors plus the gate weights; the gating config rides in the
model metadata (``extra["gating"]``); this module registers the ``gating`` checkpoint extension
(:mod:`segrt.export.model.extensions`), so :func:`segrt.export.model.checkpoints.load_checkpoint` rebuilds the
gates from the file alone.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.methods.pruning.groups import PrunePlan, apply_plan
from segrt.export.model.extensions import register_checkpoint_extension
from segrt.export.model.row_index import scatter_rows
from segrt.export.model.segformer import Block, MixFFN, SegFormer, tokens_to_grid
from segrt.runtime.errors import ConfigError
from segrt.runtime.preprocess import frames_to_input

GATING_KEY = "gating"
MODES = ("open", "mask", "topk", "threshold")
EXPORT_MODES = ("topk", "threshold", "static")


@dataclass
class GatingConfig:
    keep_ratio: float = 0.5  # target fraction of hidden neurons kept per block (sparsity target; TopK's k)
    reduction: int = 4  # gate width = max(dim // reduction, 16)
    threshold: float = 0.0  # score above which a neuron is kept (mask / threshold modes)

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep ratio {self.keep_ratio} must be in (0, 1]")
        if self.reduction < 1:
            raise ConfigError(f"gate reduction {self.reduction} must be >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GatingConfig:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid gating config {text!r}: {exc}") from exc


def kept_count(hidden: int, keep_ratio: float, align: int = 1) -> int:
    """Neurons a block keeps; ``align`` > 1 rounds to a multiple of it (ONNX Runtime's blocked NCHWc
    convolutions and most GEMM kernels want channel counts in multiples of 8 or 16)."""
    k = max(1, min(hidden, round(hidden * keep_ratio)))
    return k if align <= 1 else min(hidden, max(align, align * round(k / align)))


class NeuronGate(nn.Module):
    """(B, N, C) block-input tokens -> (B, hidden) neuron scores: mean-pool, Linear, ReLU, Linear.
    Starts with every score at +3 (all neurons kept) until calibrated or trained."""

    def __init__(self, dim: int, hidden: int, reduction: int):
        super().__init__()
        width = max(dim // reduction, 16)
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(width, hidden)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum / count, not mean: the exporter's ReduceMean-18 does not convert cleanly to opset 17
        return self.fc2(F.relu(self.fc1(x.sum(dim=1) / x.shape[1])))


class GatedMixFFN(MixFFN):
    """Mix-FFN with a neuron gate; keeps MixFFN's parameter names so the unpruned weights load as they are."""

    def __init__(self, dim: int, hidden: int, cfg: GatingConfig):
        super().__init__(dim, hidden)
        self.gate = NeuronGate(dim, hidden, cfg.reduction)
        self.gating = cfg
        self.hidden = hidden
        self.k = kept_count(hidden, cfg.keep_ratio)
        self.threshold = cfg.threshold
        self.mode = "mask"
        self.keep_fraction: torch.Tensor | None = None  # (B,) of the last mask-mode forward, for the sparsity loss
        self.kept: torch.Tensor | None = None  # (B,) neurons kept in the last forward (any mode but open)
        self.kept_index: torch.Tensor | None = None  # which neurons the last threshold-mode forward kept

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if self.mode == "open":
            return super().forward(x, h, w)
        scores = self.gate(x)
        if self.mode == "mask":
            return self._masked(x, scores, h, w)
        if self.mode == "topk":
            idx = scores.topk(self.k, dim=1).indices  # (B, k)
            self._record(kept=torch.full((x.shape[0],), self.k, dtype=torch.int64))
            return self._gathered(x, idx, h, w)
        if self.mode == "threshold":
            return self._thresholded(x, scores, h, w)
        raise ConfigError(f"unknown gating mode {self.mode!r}; expected one of {MODES}")

    def _record(self, **values) -> None:
        # statistics for the sparsity loss and the compute histogram; not part of an exported graph
        if torch.compiler.is_compiling():
            return
        for name, value in values.items():
            setattr(self, name, value)

    def _masked(self, x: torch.Tensor, scores: torch.Tensor, h: int, w: int) -> torch.Tensor:
        soft = torch.sigmoid(scores - self.threshold)
        hard = (scores > self.threshold).to(soft.dtype)
        mask = hard + soft - soft.detach()  # value: hard 0/1; gradient: the sigmoid's
        self._record(keep_fraction=mask.mean(dim=1), kept=hard.sum(dim=1).long())
        y = self.fc1(x)
        y = self.dwconv(tokens_to_grid(y, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(y) * mask[:, None, :])

    def _gathered(self, x: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Only the neurons ``idx`` (B, k): per-image weight slices, grouped conv over B*k channels."""
        b, k = idx.shape
        if b == 1:
            return self._gathered_single(x[0], idx[0], h, w)[None]
        y = torch.matmul(x, self.fc1.weight[idx].transpose(1, 2)) + self.fc1.bias[idx][:, None, :]
        grid = y.transpose(1, 2).reshape(1, b * k, h, w)
        kernel = self.dwconv.weight[idx].reshape(b * k, 1, 3, 3)
        y = F.conv2d(grid, kernel, self.dwconv.bias[idx].reshape(b * k), padding=1, groups=b * k)  # type: ignore[index]  # MixFFN's dwconv has a bias
        y = F.gelu(y.reshape(b, k, h * w).transpose(1, 2))
        return torch.matmul(y, self.fc2.weight.t()[idx]) + self.fc2.bias

    def _gathered_single(self, x: torch.Tensor, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Batch 1 (the exported case): 2-D ``addmm`` exports as Gemm with its bias fused, which ONNX Runtime
        runs without the separate broadcast Add and batched MatMul of the per-image weight slices above."""
        k = idx.shape[0]
        y = self._fc1_rows(x, idx)  # (N, k)
        kernel, bias = self.dwconv.weight[idx], self.dwconv.bias[idx]  # type: ignore[index]  # MixFFN's dwconv has a bias
        y = F.conv2d(y.t().reshape(1, k, h, w), kernel, bias, padding=1, groups=k)
        return self._fc2_rows(F.gelu(y.reshape(k, h * w).t()), idx)

    def _fc1_rows(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N, C) tokens -> (N, n): ``fc1`` for the neurons ``idx`` only, one Gemm with its bias."""
        return torch.addmm(self.fc1.bias[idx], x, self.fc1.weight[idx].t())

    def _fc2_rows(self, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N, n) activations of the neurons ``idx`` -> (N, C): their columns of ``fc2``, one Gemm with its bias."""
        return torch.addmm(self.fc2.bias, y, self.fc2.weight.t()[idx])

    def _thresholded(self, x: torch.Tensor, scores: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ConfigError("the threshold (dynamic-ratio) gating runs one image at a time; use topk for batches")
        s = scores[0]
        # at least one neuron: the arg-max is always kept, so an all-closed gate still yields valid shapes
        keep = (s > self.threshold) | (torch.arange(s.shape[0]) == s.argmax())
        idx = torch.nonzero(keep).squeeze(1)
        self._record(kept=torch.tensor([idx.shape[0]]), kept_index=idx)
        y = self._fc1_rows(x[0], idx)  # (N, n)
        # depth-wise 3x3 over a data-dependent channel count: an ONNX Conv's group must be a constant, so the
        # n channels are scattered into the dense channel grid (zeros elsewhere), convolved with the
        # unchanged kernel (9 MACs per neuron and pixel, small next to fc1/fc2's 2C) and gathered back
        dense = scatter_rows(y.t()[None], idx[None], self.hidden)[0]
        conv = self.dwconv(dense.reshape(1, self.hidden, h, w)).reshape(self.hidden, h * w)
        acc = conv.index_select(0, idx)
        y = F.gelu(acc.t())  # (N, n)
        return self._fc2_rows(y, idx)[None]


def gated_blocks(model: nn.Module) -> list[GatedMixFFN]:
    return [m for m in model.modules() if isinstance(m, GatedMixFFN)]


def gating_config(model: nn.Module) -> GatingConfig | None:
    blocks = gated_blocks(model)
    return getattr(blocks[0], "gating", None) if blocks else None


def attach_gates(model: SegFormer, cfg: GatingConfig) -> SegFormer:
    """A copy of ``model`` whose every Mix-FFN is a gated one holding the same weights (``model`` is untouched)."""
    if gated_blocks(model):
        raise ConfigError("model is already gated")
    gated = copy.deepcopy(model)
    for block in [m for m in gated.modules() if isinstance(m, Block)]:
        old = block.mlp
        new = GatedMixFFN(old.fc1.in_features, old.fc1.out_features, cfg)
        new.load_state_dict(old.state_dict(), strict=False)
        block.mlp = new.to(old.fc1.weight.device).train(old.training)
    return gated


def _restore_gates(model: SegFormer, extra_json: str) -> SegFormer:
    """Checkpoint extension: the gated model a checkpoint's ``extra["gating"]`` describes (gate weights load after)."""
    return attach_gates(model, GatingConfig.from_json(extra_json))


register_checkpoint_extension(GATING_KEY, _restore_gates)


def set_mode(model: nn.Module, mode: str, threshold: float | None = None, keep_ratio: float | None = None,
             align: int = 1) -> nn.Module:
    """Switch every gate to ``mode``; optionally override the threshold or the TopK keep ratio, and round
    every block's k to a multiple of ``align``."""
    if mode not in MODES:
        raise ConfigError(f"unknown gating mode {mode!r}; expected one of {MODES}")
    blocks = gated_blocks(model)
    if not blocks:
        raise ConfigError("model has no gated Mix-FFN blocks")
    for b in blocks:
        b.mode = mode
        if threshold is not None:
            b.threshold = threshold
        if keep_ratio is not None or align > 1:
            b.k = kept_count(b.hidden, b.gating.keep_ratio if keep_ratio is None else keep_ratio, align)
    return model


def sparsity_loss(model: nn.Module, keep_ratio: float) -> torch.Tensor:
    """Mean over gated blocks of (kept fraction - target)^2, the kept fraction averaged over the batch.
    Squared distance rather than a one-sided penalty: keeping far more or far fewer neurons than the
    export's TopK k both make the fixed-ratio export differ from what was trained."""
    terms = [(b.keep_fraction.mean() - keep_ratio) ** 2 for b in gated_blocks(model) if b.keep_fraction is not None]
    if not terms:
        raise ConfigError("no gated block ran in mask mode: run a forward pass before the sparsity loss")
    return torch.stack(terms).mean()


@torch.no_grad()
def _sum_per_block(model: SegFormer, batches: list[torch.Tensor], mode: str, module,
                   reduce) -> tuple[list[torch.Tensor], int]:
    """Run ``batches`` with every gate in ``mode`` and sum ``reduce(output)`` of ``module(block)`` per gated block
    (gate modes and train/eval restored after). -> (sums, images seen)."""
    blocks = gated_blocks(model)
    sums = [torch.zeros(b.hidden) for b in blocks]

    def recorder(i: int):
        def record(_mod, _args, out):
            sums[i] += reduce(out)
        return record

    hooks = [module(b).register_forward_hook(recorder(i)) for i, b in enumerate(blocks)]
    modes = [b.mode for b in blocks]
    was_training = model.training
    set_mode(model, mode)
    model.eval()
    images = 0
    try:
        for x in batches:
            model(x)
            images += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
        for b, m in zip(blocks, modes):
            b.mode = m
        model.train(was_training)
    return sums, images


@torch.no_grad()
def calibrate_gates(model: SegFormer, batches: list[torch.Tensor], keep_ratio: float, spread: float = 2.0) -> None:
    """Start each gate as static magnitude pruning: neuron importance = mean |GELU activation| times the
    norm of its ``fc2`` column over ``batches``; the gate bias is its log-importance, centred so that the
    top ``keep_ratio`` fraction scores above 0 and scaled to ``spread`` standard deviations. The gate's
    input-dependent part starts near zero and is learned by distillation."""
    blocks = gated_blocks(model)
    # dwconv output (B, hidden, h, w) before GELU, every neuron computed
    sums, _ = _sum_per_block(model, batches, "open", lambda blk: blk.dwconv, lambda out: out.abs().mean(dim=(0, 2, 3)))
    for b, total in zip(blocks, sums):
        # |GELU(z)| ~ |z| for the large activations that matter; fc2 column norm converts to output scale
        imp = (total / len(batches)) * b.fc2.weight.norm(dim=0)
        logi = imp.clamp_min(1e-12).log()
        cut = torch.quantile(logi, 1.0 - b.k / b.hidden)
        centred = logi - cut
        b.gate.fc2.bias.copy_(spread * centred / centred.std().clamp_min(1e-6) + b.threshold)


@torch.no_grad()
def frozen_plan(model: SegFormer, batches: list[torch.Tensor]):
    """The neurons each gate keeps on average: per block, the top ``k`` of the gate scores averaged over
    ``batches`` (training images). -> :class:`~segrt.export.methods.pruning.groups.PrunePlan` of the Mix-FFN
    neurons."""
    blocks = gated_blocks(model)
    # the gated model as trained: later gates see earlier gates' output
    sums, count = _sum_per_block(model, batches, "mask", lambda blk: blk.gate, lambda out: out.sum(dim=0))
    plan = PrunePlan.full(model.config)
    it = iter(zip(blocks, sums))
    for s, stage_blocks in enumerate(plan.mlp):
        for j in range(len(stage_blocks)):
            b, total = next(it)
            plan.mlp[s][j] = sorted((total / max(count, 1)).topk(b.k).indices.tolist())
    return plan


def freeze_gates(model: SegFormer, batches: list[torch.Tensor]) -> SegFormer:
    """Static pruning from trained gates: a smaller dense SegFormer (no gates, no TopK, no gathers) keeping each
    block's ``k`` neurons of highest mean gate score on ``batches``. When the gates barely change with the
    image (measure it: ``benchmarks/gating.py`` reports the kept neurons outside the static core), this is
    the same model without the cost of choosing per image: constant weights that runtimes pre-pack."""
    plan = frozen_plan(model, batches)
    plain = SegFormer(model.config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".mlp.gate." not in k}, strict=True)
    return apply_plan(plain, plan).eval()


def mlp_macs(hidden: int, dim: int, tokens: int) -> int:
    """MACs of one Mix-FFN on ``hidden`` neurons: fc1, 3x3 depth-wise conv, fc2."""
    return tokens * hidden * (dim + 9 + dim)


def block_shapes(model: SegFormer, size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(dim, dense hidden, tokens) of every Mix-FFN at input ``size``, in forward order."""
    cfg = model.config
    h, w = size
    out = []
    for s in range(len(cfg.widths)):
        p, st = cfg.patch_sizes[s], cfg.strides[s]
        h, w = (h + 2 * (p // 2) - p) // st + 1, (w + 2 * (p // 2) - p) // st + 1
        for b in range(cfg.depths[s]):
            out.append((cfg.widths[s], cfg.hidden_width(s, b), h * w))
    return out


def mlp_savings(model: SegFormer, size: tuple[int, int], kept: list[int], dense_dwconv: bool = False) -> int:
    """MACs skipped when block i keeps ``kept[i]`` neurons instead of all of them. ``dense_dwconv``: the
    depth-wise conv still runs on every channel (the threshold export), so only fc1 and fc2 work is saved."""
    return int(sum(mlp_macs(hid - k, dim, n) - (9 * (hid - k) * n if dense_dwconv else 0)
                   for (dim, hid, n), k in zip(block_shapes(model, size), kept)))


def kept_per_block(model: nn.Module) -> list[int]:
    """Neurons kept by each gated block in the last forward (batch of one)."""
    counts = [(b.kept, b.hidden) for b in gated_blocks(model)]
    return [int(kept[0]) if kept is not None else hidden for kept, hidden in counts]


def frames_to_batches(frames: list[np.ndarray], size: tuple[int, int], mean, std,
                      batch: int = 4) -> list[torch.Tensor]:
    return [torch.from_numpy(frames_to_input(frames[i : i + batch], size, mean, std))
            for i in range(0, len(frames), batch)]
