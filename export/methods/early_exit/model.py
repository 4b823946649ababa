"""Dynamic token pruning by early exit (DToP, Tang et al. ICCV 2023), adapted to SegFormer's hierarchy.

An auxiliary head (LayerNorm + Linear over the tokens) grades every token of the 1/16 grid at an exit
point inside the deep part of the encoder (by default stage 3 right after its patch embedding, or
after its first block). Tokens the head is confident about exit: their label is final, and the
output logits at the pixels they cover are the head's (upsampled). The ``context`` most confident
tokens of each class stay anyway, so later blocks keep some context of every class. Later blocks
compute queries, the attention output and the Mix-FFN only for the remaining tokens; exited tokens
keep their features in the token grid, which is what SegFormer's grid operations read:

- the spatial-reduction conv (keys/values) runs on the whole grid, exited tokens included, so the
  attention context is the full image; at stage 4 (no reduction) keys/values are every token;
- the Mix-FFN's 3x3 depth-wise conv needs its neighbours' hidden features: ``dwconv="grid"`` (default)
  runs fc1 on the whole grid (exact neighbour features; saves the queries, attention and fc2);
  ``dwconv="zeros"`` runs fc1 only on the remaining tokens and scatters them into a zero grid (exited
  neighbours read as zero padding, as at the image border). Measured on camvid-b0 (exit s1b1,
  threshold 0.9, CamVid val): zeros loses 1.49 mIoU points, grid 0.41, at 1.03x vs 1.01x speed, so most
  of zeros' loss is the perturbed neighbourhood of the tokens that stay, not the labels of those that exit.

Stage 4 (1/32) computes a token when any of its 2x2 stage-3 children is computed (max pooling of the
keep mask or, for a fixed budget, of the uncertainty). The decoder runs as usual on the stage maps.

Two ways to choose the remaining tokens, both exported to ONNX and run through ``Engine``:

- ``threshold``: exit when the top class probability is above ``threshold`` (strictly: 1.0 exits
  nothing). NonZero gives data-dependent token counts: dynamic shapes, ONNX Runtime, batch 1.
- ``budget``: keep a fixed ``keep_ratio`` of the tokens, the most uncertain ones (TopK, static
  shapes, K < 3840: TensorRT-friendly); every other token exits.

Uncertainty is the log-odds against the top class, ``log((1 - p) / p)`` computed as
logsumexp(other logits) - top logit: monotone in the top probability but, unlike ``1 - p``, it does not
round to 0 for confident tokens, so TopK has no ties for the exporter and PyTorch to break differently.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.model.row_index import gather_rows, overwrite_rows, scatter_rows
from segrt.export.model.segformer import Block, SegFormer, tokens_to_grid
from segrt.runtime.errors import CheckpointError, ConfigError
from segrt.runtime.sinks import writing
from segrt.trt_limits import TOPK_LIMIT  # TensorRT: TopK needs K < 3840

MODES = ("threshold", "budget")
DWCONV = ("zeros", "grid")
CONTEXT_BONUS = 1e4  # added to a context token's uncertainty so a fixed budget always keeps it


# ----------------------------------------------------------------------------- configuration


def exit_name(stage: int, block: int) -> str:
    """Exit points are named by 0-based stage and the number of that stage's blocks run before grading."""
    return f"s{stage}b{block}"


def parse_exit_name(name: str) -> tuple[int, int]:
    try:
        s, b = name.removeprefix("s").split("b")
        return int(s), int(b)
    except ValueError:
        raise ConfigError(f"bad exit point {name!r}; expected sSTAGEbBLOCK such as s2b0 (0-based stage)") from None


@dataclass(frozen=True)
class ExitConfig:
    point: str = "s2b0"  # where tokens are graded: stage 3 (1/16) after its patch embedding
    mode: str = "threshold"
    threshold: float = 0.9  # threshold mode: exit when the top probability is above this
    keep_ratio: float = 0.5  # budget mode: fraction of the tokens of every later grid that is computed
    context: int = 4  # the k most confident tokens of each class stay for context
    dwconv: str = "grid"

    def __post_init__(self) -> None:
        parse_exit_name(self.point)
        if self.mode not in MODES:
            raise ConfigError(f"unknown early-exit mode {self.mode!r}; expected one of {MODES}")
        if self.dwconv not in DWCONV:
            raise ConfigError(f"unknown dwconv handling {self.dwconv!r}; expected one of {DWCONV}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"exit threshold {self.threshold} must be in (0, 1]; 1.0 exits nothing")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep ratio {self.keep_ratio} must be in (0, 1]")
        if self.context < 1:
            raise ConfigError("context must keep at least one token per class (it also keeps the kept set non-empty)")

    @property
    def stage(self) -> int:
        return parse_exit_name(self.point)[0]

    @property
    def block(self) -> int:
        return parse_exit_name(self.point)[1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


# ----------------------------------------------------------------------------- auxiliary heads


class AuxHead(nn.Module):
    """Light token classifier at an exit point, (B, N, C) -> (B, N, K): LayerNorm + Linear, or with ``hidden``
    > 0 a two-layer MLP (LayerNorm, Linear to ``hidden``, GELU, Linear). A linear head on the raw features
    right after a patch embedding is rarely confident enough for tokens to exit; the MLP costs
    N * (C + K) * hidden MACs (47 M for B0's 1/16 grid at 512x512 with hidden 256, 1.3% of the model)."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU()) if hidden else nn.Identity()
        self.classifier = nn.Linear(hidden or dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp(self.norm(tokens)))


def make_heads(model: SegFormer, points: list[str], hidden: int | dict[str, int] = 0) -> nn.ModuleDict:
    """Untrained heads at ``points``; ``hidden``: one MLP width for all, or a width per point."""
    cfg = model.config
    heads = nn.ModuleDict()
    for name in points:
        stage, block = parse_exit_name(name)
        if not 0 <= stage < len(cfg.depths) or not 0 <= block < cfg.depths[stage]:
            raise ConfigError(f"exit point {name}: the model has stages 0..{len(cfg.depths) - 1} "
                              f"with depths {cfg.depths}; "
                              "the block index must leave at least one block to prune")
        width = hidden.get(name, 0) if isinstance(hidden, dict) else hidden
        heads[name] = AuxHead(cfg.widths[stage], cfg.num_classes, width)
    return heads


def save_heads(heads: nn.ModuleDict, path: str | Path, info: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with writing(path, "exit heads"):
        save_file(state, str(path), metadata={"segrt_exit_heads": json.dumps({"points": list(heads.keys()), **info})})


def load_heads(path: str | Path, model: SegFormer) -> tuple[nn.ModuleDict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"exit heads file {path} does not exist; train them with `segrt exit train`")
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("segrt_exit_heads")
    if raw is None:
        raise CheckpointError(f"{path} is not an exit-heads file (no segrt_exit_heads metadata)")
    info = json.loads(raw)
    width = info.get("hidden", 0)
    widths = {k: int(v) for k, v in width.items()} if isinstance(width, dict) else int(width)
    heads = make_heads(model, info["points"], widths)
    try:
        heads.load_state_dict(load_file(str(path)))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: exit heads do not fit the model: {exc}") from exc
    return heads.eval(), info


# ----------------------------------------------------------------------------- token selection


def uncertainty(aux_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, K) logits -> (log-odds against the top class (B, N), top class (B, N))."""
    logits = aux_logits.float()
    # TopK and ReduceSum only: the exporter's ReduceMax / ReduceLogSumExp carry an opset-18 attribute
    # that fails opset-17 checking
    best = logits.topk(2, dim=-1)
    top, second, pred = best.values[..., 0], best.values[..., 1], best.indices[..., 0]
    others = logits.masked_fill(F.one_hot(pred, logits.shape[-1]).bool(), float("-inf"))
    return second + torch.log(torch.exp(others - second.unsqueeze(-1)).sum(dim=-1)) - top, pred


def context_mask(u: torch.Tensor, pred: torch.Tensor, num_classes: int, k: int) -> torch.Tensor:
    """The ``k`` most confident tokens of every predicted class (all of a class with fewer than ``k``)."""
    k = min(k, u.shape[1])
    classes = torch.arange(num_classes, device=u.device).view(1, -1, 1)
    confidence = torch.where(pred.unsqueeze(1) == classes, -u.unsqueeze(1), float("-inf"))  # (B, K, N)
    kth = confidence.topk(k, dim=-1).values[..., -1]  # (B, K): k-th best confidence per class, -inf if fewer
    return -u >= torch.gather(kth, 1, pred)


def threshold_log_odds(threshold: float) -> float:
    """Top probability p > t  <=>  log((1 - p) / p) < log((1 - t) / t); t = 1 gives -inf (nothing exits)."""
    return float("-inf") if threshold >= 1.0 else math.log((1.0 - threshold) / threshold)


def budget(n: int, ratio: float) -> int:
    k = max(1, min(n, round(ratio * n)))
    if k > TOPK_LIMIT:
        raise ConfigError(f"a fixed budget of {k} tokens needs TopK with K >= 3840 (TensorRT's limit); "
                          "use a smaller keep ratio or input size")
    return k


def pool_grid(values: torch.Tensor, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) per-token values -> (B, h2*w2) on the next (half-resolution) grid, max over 2x2 children."""
    pooled = F.max_pool2d(values.view(-1, 1, h, w), 2, 2, ceil_mode=True)
    if tuple(pooled.shape[2:]) != tuple(size):
        raise ConfigError(f"cannot map a {h}x{w} keep mask onto the next stage's {size[0]}x{size[1]} grid")
    return pooled.flatten(1)


# ----------------------------------------------------------------------------- sparse blocks


def sparse_block(block: Block, x: torch.Tensor, idx: torch.Tensor, h: int, w: int, dwconv: str) -> torch.Tensor:
    """One transformer block computed only for tokens ``idx`` (B, n) of the full grid ``x`` (B, N, C);
    the others keep their features."""
    attn, mlp = block.attention, block.mlp
    y = block.layernorm_before(x)  # keys/values come from the whole grid
    xk = gather_rows(x, idx) + attn.attend(gather_rows(y, idx), attn.reduce_kv(y, h, w))
    if dwconv == "grid":
        x = overwrite_rows(x, idx, xk)
        grid = mlp.fc1(block.layernorm_after(x))
    else:
        hk = mlp.fc1(block.layernorm_after(xk))
        grid = scatter_rows(hk, idx, x.shape[1])
    hidden = gather_rows(mlp.dwconv(tokens_to_grid(grid, h, w)).flatten(2).transpose(1, 2), idx)
    return overwrite_rows(x, idx, xk + mlp.fc2(F.gelu(hidden)))


# ----------------------------------------------------------------------------- the model


@dataclass
class ExitStats:
    """What the last eager forward pass computed (for tests, evaluation and the benchmark)."""

    tokens: list[int]  # tokens per stage grid
    grids: list[tuple[int, int]]  # (h, w) per stage
    computed: list[int]  # tokens the blocks computed per stage (after the exit point)
    exited_fraction: float  # of the exit grid
    exited: torch.Tensor | None = None  # (B, 1, h, w) bool at the logits' resolution
    aux_logits: torch.Tensor | None = None  # (B, K, h, w) the head's logits at the logits' resolution

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "grids": self.grids, "computed": self.computed,
                "exited_fraction": self.exited_fraction}


class EarlyExitSegFormer(nn.Module):
    """A SegFormer whose tokens exit at ``config.point`` (see the module docstring)."""

    def __init__(self, model: SegFormer, head: AuxHead, config: ExitConfig):
        super().__init__()
        stage, block = config.stage, config.block
        if not 0 <= stage < len(model.encoder.stages) or not 0 <= block < len(model.encoder.stages[stage].blocks):
            raise ConfigError(f"exit point {config.point} is not inside the model's encoder")
        self.model, self.head, self.config = model, head, config
        self.last_stats: ExitStats | None = None

    def select(self, aux_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (indices of the tokens to compute (B, n), keep mask (B, N) float, score to pool for later grids)."""
        cfg = self.config
        u, pred = uncertainty(aux_logits)
        ctx = context_mask(u, pred, aux_logits.shape[-1], cfg.context)
        if cfg.mode == "budget":
            score = u + ctx.float() * CONTEXT_BONUS
            idx = score.topk(budget(score.shape[1], cfg.keep_ratio), dim=1).indices
            keep = torch.zeros_like(score).scatter(1, idx, 1.0)
            return idx, keep, score
        if aux_logits.shape[0] != 1:
            raise ConfigError("threshold early exit computes a different number of tokens per image: run batch 1 "
                              "(or use the fixed-budget mode)")
        keep = ((u >= threshold_log_odds(cfg.threshold)) | ctx).float()
        return self.indices(keep), keep, keep

    @staticmethod
    def indices(keep: torch.Tensor) -> torch.Tensor:
        """Positions of the kept tokens of a batch-1 mask, in grid order (data-dependent count)."""
        return torch.nonzero(keep[0] > 0.5)[:, 0].unsqueeze(0)

    def later_indices(self, score: torch.Tensor, n: int) -> torch.Tensor:
        if self.config.mode == "budget":
            return score.topk(budget(n, self.config.keep_ratio), dim=1).indices
        return self.indices(score)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        features, tokens, computed, grids = [], [], [], []
        idx = score = keep = aux = None
        grid = (0, 0)
        for s, stage in enumerate(self.model.encoder.stages):
            t, h, w = stage.patch_embeddings(x)
            tokens.append(h * w)
            grids.append((h, w))
            start = 0
            if s == cfg.stage:
                for block in stage.blocks[: cfg.block]:
                    t = block(t, h, w)
                aux = self.head(t)
                idx, keep, score = self.select(aux)
                grid, start = (h, w), cfg.block
            elif s > cfg.stage:
                score = pool_grid(score, *grid, (h, w))
                idx, grid = self.later_indices(score, h * w), (h, w)
            for block in stage.blocks[start:]:
                t = block(t, h, w) if idx is None else sparse_block(block, t, idx, h, w, cfg.dwconv)
            computed.append(h * w if idx is None else idx.shape[1])
            x = tokens_to_grid(stage.layer_norm(t), h, w)
            features.append(x)
        logits = self.model.decode_head(features)
        gh, gw = exit_grid = (features[cfg.stage].shape[2], features[cfg.stage].shape[3])
        exited = F.interpolate((1.0 - keep).view(-1, 1, gh, gw), size=logits.shape[2:], mode="nearest")
        aux_map = F.interpolate(tokens_to_grid(aux, *exit_grid), size=logits.shape[2:], mode="bilinear",
                                align_corners=False)
        if not torch.compiler.is_compiling():
            self.last_stats = ExitStats(tokens, grids, computed, float(1.0 - keep.mean()), exited > 0.5, aux_map)
        return torch.where(exited > 0.5, aux_map.to(logits.dtype), logits)


def attach_exit(model: SegFormer, heads: nn.ModuleDict, config: ExitConfig) -> EarlyExitSegFormer:
    """A new early-exit model on copies of ``model`` and the head at ``config.point``, in eval mode; the arguments
    are untouched (the wrapper's ``eval()`` and later changes never reach them)."""
    if config.point not in heads:
        raise ConfigError(f"no trained head for exit point {config.point}; the heads file has {list(heads.keys())}")
    return EarlyExitSegFormer(copy.deepcopy(model), copy.deepcopy(heads[config.point]), config).eval()


def sparse_stage_macs(exit_model: EarlyExitSegFormer, stage: int, grid: tuple[int, int], n: int) -> float:
    """MACs of the pruned blocks of ``stage`` when they compute ``n`` of the grid's tokens (FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = exit_model.config
    stage_module = exit_model.model.encoder.stages[stage]
    blocks = stage_module.blocks[cfg.block:] if stage == cfg.stage else stage_module.blocks
    h, w = grid
    x = torch.zeros(1, h * w, exit_model.model.config.widths[stage])
    idx = torch.arange(n).unsqueeze(0)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        for block in blocks:
            x = sparse_block(block, x, idx, h, w, cfg.dwconv)
    return counter.get_total_flops() / 2


class TokenProbe:
    """Tokens an exported threshold graph computes per pruned grid: the real lengths of its NonZero index
    sets, read back by running the graph with them exposed as outputs (one session, many inputs)."""

    def __init__(self, onnx_model, threads: int | None = None):
        import onnx
        import onnxruntime as ort

        proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        self.names = [n.output[0] for n in probe.graph.node if n.op_type == "NonZero"]
        for name in self.names:
            probe.graph.output.append(onnx.helper.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x) -> list[int]:
        return [int(v.shape[1]) for v in self.session.run(self.names, {self.input: x})]


def kept_token_counts(onnx_model, x) -> list[int]:
    return TokenProbe(onnx_model)(x)
