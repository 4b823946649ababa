"""SegFormer (MiT-B0..B5 encoder + all-MLP decode head), written for export.

One readable file per model family, in the spirit of timm. The module tree mirrors the
transformers 5.x layout (``stages.N.blocks.M.attention.q_proj`` ...) so that Hugging Face checkpoints
load with renames only; other formats are converted in :mod:`segrt.export.model.checkpoints`.

Written for ONNX export: no data-dependent Python control flow, attention as plain
MatMul/Softmax/MatMul (portable to every ONNX consumer), spatial sizes taken from tensor shapes so the
same code exports with static or dynamic input sizes. Per-block widths are explicit in the config so
that structurally pruned models (smaller MLPs, fewer heads) are described by their checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segrt.runtime.errors import ConfigError

# Encoder hyper-parameters of the published MiT variants (Xie et al. 2021, Table 6).
VARIANTS: dict[str, dict] = {
    "b0": dict(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": dict(widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": dict(widths=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": dict(widths=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": dict(widths=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": dict(widths=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_dim=768),
}


@dataclass
class SegFormerConfig:
    """Architecture of one SegFormer. Serialised into checkpoints and ONNX metadata as JSON."""

    num_classes: int = 19
    widths: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    heads: tuple[int, ...] = (1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)
    strides: tuple[int, ...] = (4, 2, 2, 2)
    decoder_dim: int = 256
    in_channels: int = 3
    # "hf": Linear projections, one fuse conv + BN + ReLU (transformers, NVlabs).
    # "mmseg": each projection is conv1x1 + BN + ReLU, concatenated in stage order (mmsegmentation).
    head_style: str = "hf"
    # transformers uses 1e-5 everywhere; NVlabs and mmsegmentation use 1e-6 inside the blocks.
    block_eps: float = 1e-5
    embed_eps: float = 1e-5
    # Structured pruning overrides: per stage, per block. None means the dense width.
    mlp_hidden: list[list[int]] | None = None
    attn_dims: list[list[int]] | None = None  # q/k/v inner width (heads * head_dim) per block
    block_heads: list[list[int]] | None = None
    variant: str = "b0"

    @classmethod
    def from_variant(cls, variant: str, num_classes: int, **overrides) -> SegFormerConfig:
        key = variant.lower().removeprefix("mit-").removeprefix("mit_")
        if key not in VARIANTS:
            raise ConfigError(f"unknown SegFormer variant {variant!r}; expected one of {sorted(VARIANTS)}")
        return cls(num_classes=num_classes, variant=key, **{**VARIANTS[key], **overrides})

    def hidden_width(self, stage: int, block: int) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden[stage][block]
        return self.widths[stage] * self.mlp_ratios[stage]

    def attn_width(self, stage: int, block: int) -> int:
        if self.attn_dims is not None:
            return self.attn_dims[stage][block]
        return self.widths[stage]

    def num_heads(self, stage: int, block: int) -> int:
        if self.block_heads is not None:
            return self.block_heads[stage][block]
        return self.heads[stage]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SegFormerConfig:
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown SegFormer config fields {sorted(unknown)}")
        for name, value in raw.items():
            if isinstance(value, list) and name not in ("mlp_hidden", "attn_dims", "block_heads"):
                raw[name] = tuple(value)
        return cls(**raw)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, patch: int, stride: int, eps: float):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, patch, stride, padding=patch // 2)
        self.layer_norm = nn.LayerNorm(out_ch, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.layer_norm(x.flatten(2).transpose(1, 2)), h, w


def tokens_to_grid(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, H, W) feature map."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class SequenceReduction(nn.Module):
    """Strided conv that shrinks the key/value token grid by ``ratio`` in each direction."""

    def __init__(self, dim: int, ratio: int, eps: float):
        super().__init__()
        self.sequence_reduction = nn.Conv2d(dim, dim, ratio, ratio)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.sequence_reduction(tokens_to_grid(x, h, w))
        return self.layer_norm(x.flatten(2).transpose(1, 2))


class EfficientAttention(nn.Module):
    """Multi-head attention whose keys/values come from a spatially reduced token grid.

    ``token_merge`` is a hook for training-free token merging (Segformer++): when set, it receives the
    block's hidden states and returns (queries-to-attend, key/value tokens, unmerge) so that the
    attention core below stays one code path.
    """

    def __init__(self, dim: int, inner: int, heads: int, sr_ratio: int, eps: float):
        super().__init__()
        if inner % heads:
            raise ConfigError(f"attention width {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = inner // heads
        self.scale = self.head_dim**-0.5
        self.sr_ratio = sr_ratio
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.o_proj = nn.Linear(inner, dim)
        if sr_ratio > 1:
            self.sequence_reduction = SequenceReduction(dim, sr_ratio, eps)
        self.token_merge: nn.Module | None = None

    def reduce_kv(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.sequence_reduction(x, h, w) if self.sr_ratio > 1 else x

    def attend(self, q_tokens: torch.Tensor, kv_tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = q_tokens.shape
        m = kv_tokens.shape[1]
        q = self.q_proj(q_tokens).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(kv_tokens).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv_tokens).reshape(b, m, self.heads, self.head_dim).transpose(1, 2)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.o_proj(out)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if self.token_merge is not None:
            return self.token_merge(self, x, h, w)
        return self.attend(x, self.reduce_kv(x, h, w))


class MixFFN(nn.Module):
    """fc1 -> 3x3 depth-wise conv (implicit position encoding) -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(tokens_to_grid(x, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    def __init__(self, cfg: SegFormerConfig, stage: int, block: int, drop_path: float):
        super().__init__()
        dim = cfg.widths[stage]
        self.layernorm_before = nn.LayerNorm(dim, eps=cfg.block_eps)
        self.attention = EfficientAttention(
            dim, cfg.attn_width(stage, block), cfg.num_heads(stage, block), cfg.sr_ratios[stage], cfg.embed_eps
        )
        self.layernorm_after = nn.LayerNorm(dim, eps=cfg.block_eps)
        self.mlp = MixFFN(dim, cfg.hidden_width(stage, block))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.layernorm_before(x), h, w))
        return x + self.drop_path(self.mlp(self.layernorm_after(x), h, w))


class Stage(nn.Module):
    def __init__(self, cfg: SegFormerConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        in_ch = cfg.in_channels if stage == 0 else cfg.widths[stage - 1]
        self.patch_embeddings = OverlapPatchEmbed(
            in_ch, cfg.widths[stage], cfg.patch_sizes[stage], cfg.strides[stage], cfg.embed_eps
        )
        self.blocks = nn.ModuleList(Block(cfg, stage, i, drop_paths[i]) for i in range(cfg.depths[stage]))
        self.layer_norm = nn.LayerNorm(cfg.widths[stage], eps=cfg.block_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = self.patch_embeddings(x)
        for block in self.blocks:
            x = block(x, h, w)
        return tokens_to_grid(self.layer_norm(x), h, w)


class MixVisionTransformer(nn.Module):
    """The hierarchical MiT encoder: four stages at strides 4, 8, 16 and 32."""

    def __init__(self, cfg: SegFormerConfig, drop_path_rate: float = 0.0):
        super().__init__()
        total = sum(cfg.depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(cfg.depths[:i]) for i in range(len(cfg.depths))]
        self.stages = nn.ModuleList(
            Stage(cfg, s, rates[starts[s] : starts[s] + cfg.depths[s]]) for s in range(len(cfg.depths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class LinearProjection(nn.Module):
    """Per-pixel Linear over a feature map (the "MLP" of the all-MLP head), kept as nn.Linear so
    transformers checkpoints load unchanged."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = nn.Linear(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))
        return y.transpose(1, 2).reshape(b, -1, h, w)


class AllMLPHead(nn.Module):
    """Project each stage to ``decoder_dim``, upsample to stride 4, concatenate, fuse, classify."""

    def __init__(self, cfg: SegFormerConfig):
        super().__init__()
        self.style = cfg.head_style
        d = cfg.decoder_dim
        if cfg.head_style == "hf":
            self.linear_projections = nn.ModuleList(LinearProjection(c, d) for c in cfg.widths)
        elif cfg.head_style == "mmseg":
            self.linear_projections = nn.ModuleList(ConvBNReLU(c, d) for c in cfg.widths)
        else:
            raise ConfigError(f"unknown head_style {cfg.head_style!r}; expected 'hf' or 'mmseg'")
        self.linear_fuse = nn.Conv2d(d * len(cfg.widths), d, 1, bias=False)
        self.batch_norm = nn.BatchNorm2d(d)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(d, cfg.num_classes, 1)

    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        size = features[0].shape[2:]
        outs = []
        for feat, proj in zip(features, self.linear_projections):
            y = proj(feat)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        # transformers and NVlabs concatenate deepest stage first; mmsegmentation in stage order.
        return outs[::-1] if self.style == "hf" else outs

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.linear_fuse(torch.cat(self.project(features), dim=1))
        x = self.dropout(F.relu(self.batch_norm(x)))
        return self.classifier(x)


class SegFormer(nn.Module):
    """Image (B, 3, H, W), normalised RGB -> class logits (B, K, H/4, W/4)."""

    def __init__(self, cfg: SegFormerConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.config = cfg
        self.encoder = MixVisionTransformer(cfg, drop_path_rate)
        self.decode_head = AllMLPHead(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.encoder(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_stride(cfg: SegFormerConfig) -> int:
    """Stride of the logits relative to the input (the first stage's stride)."""
    return cfg.strides[0]
