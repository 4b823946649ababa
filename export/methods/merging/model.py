"""Training-free token merging for any loaded SegFormer (Segformer++, Kienzle et al. 2024).

Merging happens only inside each block's efficient self-attention (the Mix-FFN always sees every
token), through the ``EfficientAttention.token_merge`` hook, and is recomputed in every block:

- keys/values (``keys_values``): bipartite soft matching on the spatially reduced tokens (metric =
  those tokens); K and V are projected from the merged set; never unmerged.
- queries, ``bsm``: bipartite soft matching on the layer-normed hidden states, attention (incl. the
  output projection) on the merged queries, then unmerge back to every position.
- queries, ``pool``: kernel = stride average pooling (ceil mode), attention against the usual reduced
  keys/values, output copied back to each cell.
- ``downsample``: the input image scaled down (nearest) before stage 1, the paper's baseline.

Bipartite soft matching follows ToMe's shape: :func:`bipartite_merge` returns the merged tokens and
an ``unmerge`` closure. Destinations are the top-left token of every full ``sy x sx`` cell, sources
everything else: index sets that depend only on the grid, computed once per shape (constants in the
exported graph). ``r = int(N * ratio)`` tokens are merged away, capped at the number of sources.
No randomness, no size tracking, no proportional attention (as in the reference code).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.methods.merging import ops as merge_ops
from segrt.export.model.segformer import EfficientAttention, SegFormer, SegFormerConfig, tokens_to_grid
from segrt.runtime.errors import ConfigError

STRATEGIES = ("none", "2x2", "hq", "fast", "downsample")

# Bipartite matching is discontinuous in its input: where two candidates score within rounding of each
# other (smooth or upscaled images make many near-identical tokens), ONNX Runtime and PyTorch may pick
# different ones. Measured on the seeded random B0 with the bundled sample frames: at 512x512 exports
# match to ~7e-7, but at 1024x1024 "hq" differs by 1.4e-4 (label agreement 1.0), while PyTorch itself
# moves by 5e-5 when its input is perturbed by 1e-6 (3e-6 without merging). Exports with matching are
# therefore verified at this tolerance; the label agreement is reported alongside.
MATCHING_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Reduction:
    """How one token set of a stage (queries, or keys/values) is reduced.

    ``method`` "bsm": bipartite soft matching merging ``ratio`` of the tokens away, one destination
    per ``cell`` (rows, cols). "pool": average pooling with kernel = stride = ``cell`` (queries only).
    """

    method: str = "bsm"
    ratio: float = 0.0
    cell: tuple[int, int] = (2, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell", _cell(self.cell))
        if self.method not in ("bsm", "pool"):
            raise ConfigError(f"unknown token reduction {self.method!r}; expected 'bsm' or 'pool'")
        if self.method == "bsm" and not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"merge ratio {self.ratio} must be in [0, 1): it is the fraction of tokens merged away")

    def to_dict(self) -> dict:
        out: dict = {"method": self.method, "cell": list(self.cell)}
        if self.method == "bsm":
            out["ratio"] = self.ratio
        return out


@dataclass(frozen=True)
class StageMerge:
    queries: Reduction | None = None
    keys_values: Reduction | None = None

    def __post_init__(self) -> None:
        if self.keys_values is not None and self.keys_values.method != "bsm":
            raise ConfigError("keys/values are already spatially reduced; only 'bsm' merging applies to them")

    @property
    def active(self) -> bool:
        return self.queries is not None or self.keys_values is not None


@dataclass(frozen=True)
class MergeConfig:
    """Per-stage token reduction plus an optional input downscale; one object for every strategy."""

    name: str = "custom"
    stages: tuple[StageMerge, ...] = ()
    downsample: int = 1  # input scaled down by this factor (nearest) before stage 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if int(self.downsample) != self.downsample or self.downsample < 1:
            raise ConfigError(f"downsample factor must be a positive integer, got {self.downsample}")

    @property
    def needs_static_size(self) -> bool:
        return any(r is not None and r.method == "bsm" for s in self.stages for r in (s.queries, s.keys_values))

    @property
    def is_identity(self) -> bool:
        return self.downsample == 1 and not any(s.active for s in self.stages)

    def stage(self, i: int) -> StageMerge:
        return self.stages[i] if i < len(self.stages) else StageMerge()

    def to_dict(self) -> dict:
        stages = []
        for s in self.stages:
            entry = {}
            if s.queries is not None:
                entry["q"] = s.queries.to_dict()
            if s.keys_values is not None:
                entry["kv"] = s.keys_values.to_dict()
            stages.append(entry)
        return {"name": self.name, "stages": stages, "downsample": self.downsample}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: object) -> MergeConfig:
        """A JSON-shaped config, checked against :data:`MERGE_SCHEMA`; errors name the bad key path."""
        if not isinstance(raw, dict):
            _bad("", f"must be an object with {_keys(MERGE_SCHEMA)}, got {_shown(raw)}")
        _only(raw, MERGE_SCHEMA, "")
        name = raw.get("name", "custom")
        if not isinstance(name, str):
            _bad("name", f"must be a string, got {_shown(name)}")
        entries = raw.get("stages", [])
        if not isinstance(entries, list):
            _bad("stages", f"must be a list of per-stage objects ({_keys(STAGE_SCHEMA)}), got {_shown(entries)}")
        stages = []
        for i, entry in enumerate(entries):
            where = f"stages[{i}]"
            if entry is None:  # refused rather than guessed: a stage without merging is written {}
                _bad(where, "is null; write {} for a stage without merging")
            if not isinstance(entry, dict):
                _bad(where, f"must be an object with {_keys(STAGE_SCHEMA)} ({{}} for no merging), got {_shown(entry)}")
            _only(entry, STAGE_SCHEMA, where)
            stages.append(StageMerge(*(_reduction(entry.get(k), f"{where}.{k}") for k in ("q", "kv"))))
        downsample = raw.get("downsample", 1)
        if not _is_number(downsample) or downsample != int(downsample) or downsample < 1:
            _bad("downsample", f"must be a whole number >= 1 (the input is scaled down by it), "
                               f"got {_shown(downsample)}")
        return cls(name, tuple(stages), int(downsample))


# The JSON form of a merge config (all keys optional). Hand-checked by MergeConfig.from_dict / _reduction:
# every value's type and range, unknown keys refused, each error naming its key path (stages[0].kv.ratio).
MERGE_SCHEMA = {"name": "string", "stages": "list of stage objects", "downsample": "whole number >= 1"}
STAGE_SCHEMA = {"q": "reduction of the queries", "kv": "reduction of the keys/values"}
REDUCTION_SCHEMA = {"method": "'bsm' (default) or 'pool' (queries only)",
                    "ratio": "bsm: fraction of tokens merged away, > 0 and < 1 (required)",
                    "cell": "positive integer or [rows, cols]"}


def _bad(path: str, message: str) -> NoReturn:
    raise ConfigError(f"merge config {path + ' ' if path else ''}{message}")


def _shown(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(schema: dict) -> str:
    return ", ".join(f"'{k}'" for k in schema)


def _only(raw: dict, schema: dict, path: str) -> None:
    for key in raw:
        if key not in schema:
            where = f"{path}.{key}" if path else str(key)
            _bad(where, f"is not a known key; expected {_keys(schema)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _cell(value, where: str = "cell") -> tuple[int, int]:
    whole = isinstance(value, int) and not isinstance(value, bool)
    cell = (value, value) if whole else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(cell) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in cell):
        raise ConfigError(f"merge config {where} must be a positive integer or two (rows, cols), got {_shown(value)}")
    return cell  # type: ignore[return-value]


def _reduction(raw: object, where: str) -> Reduction | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        _bad(where, f"must be an object such as {{\"ratio\": 0.8, \"cell\": [4, 4]}}, got {_shown(raw)}")
    _only(raw, REDUCTION_SCHEMA, where)
    method = raw.get("method", "bsm")
    if method not in ("bsm", "pool"):
        _bad(f"{where}.method", f"must be 'bsm' or 'pool', got {_shown(method)}")
    if where.endswith(".kv") and method != "bsm":
        _bad(f"{where}.method", "keys/values are already spatially reduced; only 'bsm' merging applies to them")
    cell = _cell(raw.get("cell", (2, 2)), f"{where}.cell")
    if method == "pool":
        if "ratio" in raw:
            _bad(f"{where}.ratio", "does not apply to 'pool' (it keeps one token per cell); leave it out")
        return Reduction("pool", 0.0, cell)
    if "ratio" not in raw:
        _bad(f"{where}.ratio", "is required for 'bsm': the fraction of tokens merged away, > 0 and < 1")
    ratio = raw["ratio"]
    if not _is_number(ratio) or not 0.0 < ratio < 1.0:
        _bad(f"{where}.ratio", f"must be a number > 0 and < 1 (the fraction of tokens merged away), "
                               f"got {_shown(ratio)}")
    most = 1.0 - 1.0 / (cell[0] * cell[1])  # one destination stays in every cell
    if ratio > most:
        _bad(f"{where}.ratio", f"{ratio} is more than {cell[0]}x{cell[1]} cells can merge (at most {most:.4g}: "
                               f"one token of each cell stays); use a larger cell")
    return Reduction("bsm", float(ratio), cell)


def _bsm(ratio: float, cell: int) -> Reduction:
    return Reduction("bsm", ratio, (cell, cell))


# Segformer++ presets (MiT-B5 Cityscapes/ADE20K configs). The public package misspells the modes of
# "fast" and "2x2", which silently disables them; these are the settings its paper describes.
PRESETS: dict[str, MergeConfig] = {
    "none": MergeConfig("none"),
    "2x2": MergeConfig("2x2", tuple(StageMerge(queries=Reduction("pool", cell=(2, 2))) for _ in range(4))),
    "hq": MergeConfig("hq", (StageMerge(keys_values=_bsm(0.6, 2)), StageMerge(keys_values=_bsm(0.6, 2)),
                             StageMerge(queries=_bsm(0.8, 4)), StageMerge(queries=_bsm(0.8, 4)))),
    "fast": MergeConfig("fast", (StageMerge(keys_values=_bsm(0.9, 4)), StageMerge(keys_values=_bsm(0.9, 4)),
                                 StageMerge(queries=_bsm(0.9, 4)), StageMerge(queries=_bsm(0.9, 4)))),
    "downsample": MergeConfig("downsample", downsample=2),
}


def merge_config(spec: str | MergeConfig | dict | None) -> MergeConfig:
    """A preset name, a JSON object (text or ``.json`` file), a dict or a config -> :class:`MergeConfig`."""
    if spec is None:
        return PRESETS["none"]
    if isinstance(spec, MergeConfig):
        return spec
    if isinstance(spec, dict):
        return MergeConfig.from_dict(spec)
    text = str(spec).strip()
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    if text.endswith(".json") and not text.startswith("{"):
        path = Path(text)
        if not path.is_file():  # also a FIFO or device, whose reading would block or never end
            raise ConfigError(f"merge config file {path} does not exist or is not a regular file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read merge config file {path}: {exc}") from exc
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ConfigError(f"merge strategy {_shown(str(spec))} is neither a preset ({', '.join(STRATEGIES)}) "
                          f"nor a JSON config: {exc}") from exc
    return MergeConfig.from_dict(raw)


# ----------------------------------------------------------------------------- bipartite soft matching


@functools.lru_cache(maxsize=64)
def cell_partition(h: int, w: int, cell: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Destinations (top-left token of every full cell) and sources (all others) of an h x w grid,
    as flat token indices. Rows/cols left over past the last full cell are all sources."""
    sy, sx = cell
    rows = np.arange(h // sy) * sy
    cols = np.arange(w // sx) * sx
    dst = (rows[:, None] * w + cols[None, :]).ravel().astype(np.int64)
    is_dst = np.zeros(h * w, dtype=bool)
    is_dst[dst] = True
    src = np.flatnonzero(~is_dst).astype(np.int64)
    return dst, src


def merge_count(n: int, num_sources: int, ratio: float) -> int:
    """Tokens merged away: r = int(N * ratio), capped at the number of sources."""
    return min(int(n * ratio), num_sources)


def merged_size(h: int, w: int, reduction: Reduction) -> int:
    """Tokens left after ``reduction`` on an h x w grid (what the attention actually sees)."""
    if reduction.method == "pool":
        sy, sx = reduction.cell
        return -(-h // sy) * -(-w // sx)
    dst, src = cell_partition(h, w, reduction.cell)
    if len(dst) == 0:
        return h * w
    return h * w - merge_count(h * w, len(src), reduction.ratio)


def _static(*sizes) -> None:
    if any(not isinstance(s, int) for s in sizes):
        raise ConfigError("token merging needs a fixed input size: its index sets are constants of the grid; "
                          "export without --dynamic")


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, grid: tuple[int, int], reduction: Reduction
                    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Merge tokens of ``x`` (B, h*w, C) by bipartite soft matching under ``metric``; returns the
    merged tokens and ``unmerge``, which maps per-merged-token outputs back to every position."""
    h, w = grid
    _static(h, w)
    dst, src = cell_partition(h, w, reduction.cell)
    r = merge_count(h * w, len(src), reduction.ratio)
    if r == 0 or len(dst) == 0:  # grid smaller than a cell, or nothing to merge at this ratio
        return x, lambda y: y
    merged, slot = merge_ops.token_merge(x, metric, torch.from_numpy(dst).to(x.device),
                                         torch.from_numpy(src).to(x.device), r)
    return merged, lambda y: merge_ops.token_unmerge(y, slot)


def pool_queries(x: torch.Tensor, grid: tuple[int, int], cell: tuple[int, int]
                 ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Average-pool the query grid (ceil mode); ``unpool`` copies each output back to its cell."""
    h, w = grid
    b = x.shape[0]
    pooled = F.avg_pool2d(tokens_to_grid(x, h, w), cell, cell, ceil_mode=True)
    hp, wp = pooled.shape[2], pooled.shape[3]
    sy, sx = cell

    def unpool(y: torch.Tensor) -> torch.Tensor:
        g = tokens_to_grid(y, hp, wp)
        ch = g.shape[1]
        g = g[:, :, :, None, :, None].expand(b, ch, hp, sy, wp, sx).reshape(b, ch, hp * sy, wp * sx)
        return g[:, :, :h, :w].flatten(2).transpose(1, 2)

    return pooled.flatten(2).transpose(1, 2), unpool


# ----------------------------------------------------------------------------- model hooks


@dataclass
class TokenCounts:
    """Tokens entering and used by one attention call (recorded in eager mode, for tests and reports)."""

    queries: tuple[int, int]
    keys_values: tuple[int, int]


class AttentionTokenMerge(nn.Module):
    """The ``EfficientAttention.token_merge`` hook for one stage's setting."""

    def __init__(self, setting: StageMerge):
        super().__init__()
        self.setting = setting
        self.last_counts: TokenCounts | None = None

    def forward(self, attn: EfficientAttention, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        kv = attn.reduce_kv(x, h, w)
        kv_in = kv.shape[1]
        s = attn.sr_ratio
        if self.setting.keys_values is not None:
            kv, _ = bipartite_merge(kv, kv, (h // s, w // s), self.setting.keys_values)  # conv: kernel = stride = s
        q, unmerge = x, (lambda y: y)
        if self.setting.queries is not None:
            if self.setting.queries.method == "pool":
                q, unmerge = pool_queries(x, (h, w), self.setting.queries.cell)
            else:
                q, unmerge = bipartite_merge(x, x, (h, w), self.setting.queries)
        if not torch.compiler.is_compiling():
            self.last_counts = TokenCounts((x.shape[1], q.shape[1]), (kv_in, kv.shape[1]))
        return unmerge(attn.attend(q, kv))


class DownsampledInput(nn.Module):
    """Runs ``model`` on the input scaled down by ``factor`` (nearest); logits come out at stride
    ``4 * factor`` and are upsampled by the runtime like any other logits."""

    def __init__(self, model: nn.Module, factor: int):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(F.interpolate(x, scale_factor=1.0 / self.factor, mode="nearest"))


def _check_stage_count(config: MergeConfig, model_stages: int) -> None:
    if len(config.stages) > model_stages:
        _bad(f"stages[{model_stages}]", f"is one of {len(config.stages)} stage entries; the model has "
                                        f"{model_stages} stages (stages[0] to stages[{model_stages - 1}])")


def _check_reduction(reduction: Reduction, where: str, grid: tuple[int, int], stage: int,
                     size: tuple[int, int]) -> None:
    """Refuse a reduction that merges no token of its ``grid``: it would cost a hook and change nothing."""
    h, w = grid
    sy, sx = reduction.cell
    at = f"the {h}x{w} token grid of stage {stage} at the {size[0]}x{size[1]} export size"
    if sy > h or sx > w:
        _bad(f"{where}.cell", f"{sy}x{sx} is larger than {at}; use a smaller cell or a larger size")
    if merged_size(h, w, reduction) >= h * w:
        if reduction.method == "pool":
            _bad(f"{where}.cell", f"{sy}x{sx} pools nothing on {at}")
        _bad(f"{where}.ratio", f"{reduction.ratio} merges no token of {at}; use a larger ratio")


def check_merge_fits(cfg: SegFormerConfig, config: MergeConfig | str | dict, size: tuple[int, int]) -> MergeConfig:
    """The config, checked against the model it is applied to at export ``size`` (H, W): no more stage
    entries than the model has stages, and every reduction merges tokens of its stage's grid (queries:
    the stage grid; keys/values: the grid after the stage's spatial reduction). Errors name the key path."""
    config = merge_config(config)
    _check_stage_count(config, len(cfg.strides))
    for plan in _stage_grids(cfg, config, size):
        stage, (h, w), (kh, kw) = plan
        setting = config.stage(stage)
        if h < 1 or w < 1 or kh < 1 or kw < 1:
            _bad("downsample", f"{config.downsample} leaves no tokens in stage {stage + 1} at the "
                               f"{size[0]}x{size[1]} export size")
        if setting.queries is not None:
            _check_reduction(setting.queries, f"stages[{stage}].q", (h, w), stage + 1, size)
        if setting.keys_values is not None:
            _check_reduction(setting.keys_values, f"stages[{stage}].kv", (kh, kw), stage + 1, size)
    return config


def _stage_grids(cfg: SegFormerConfig, config: MergeConfig, size: tuple[int, int]
                 ) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """Per stage: (index, query grid, key/value grid) at input ``size`` after the config's downsampling."""
    h, w = size[0] // config.downsample, size[1] // config.downsample
    grids = []
    for i, (patch, stride, sr) in enumerate(zip(cfg.patch_sizes, cfg.strides, cfg.sr_ratios)):
        pad = patch // 2
        h, w = (h + 2 * pad - patch) // stride + 1, (w + 2 * pad - patch) // stride + 1
        kv = (h // sr, w // sr) if sr > 1 else (h, w)
        grids.append((i, (h, w), kv))
    return grids


def apply_merging(model: SegFormer, config: MergeConfig | str | dict | None,
                  size: tuple[int, int] | None = None) -> nn.Module:
    """A copy of ``model`` with token merging installed (the original is untouched).

    Strategy "none" returns an unhooked copy, i.e. exactly the original function. With the export
    ``size`` (H, W) the config is checked against the model's grids first (:func:`check_merge_fits`).
    """
    config = merge_config(config)
    if size is not None:
        check_merge_fits(model.config, config, size)
    _check_stage_count(config, len(model.encoder.stages))
    merged = copy.deepcopy(model).eval()
    for i, stage in enumerate(merged.encoder.stages):
        setting = config.stage(i)
        for block in stage.blocks:
            block.attention.token_merge = AttentionTokenMerge(setting) if setting.active else None
    if config.downsample > 1:
        return DownsampledInput(merged, config.downsample).eval()
    return merged


def recorded_counts(model: nn.Module) -> list[list[TokenCounts | None]]:
    """Per stage, per block: the token counts seen by the last eager forward pass."""
    segformer = next(m for m in model.modules() if isinstance(m, SegFormer))
    out = []
    for stage in segformer.encoder.stages:
        out.append([b.attention.token_merge.last_counts if b.attention.token_merge is not None else None
                    for b in stage.blocks])
    return out


# ----------------------------------------------------------------------------- planning


@dataclass
class StagePlan:
    stage: int
    grid: tuple[int, int]
    queries: tuple[int, int]  # (tokens, tokens attended with)
    keys_values: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def plan_tokens(cfg: SegFormerConfig, config: MergeConfig | str, size: tuple[int, int]) -> list[StagePlan]:
    """Token counts per stage at input ``size`` (H, W), computed without running the model; the config
    is checked against the model first (:func:`check_merge_fits`), so every reduction listed merges."""
    config = check_merge_fits(cfg, config, size)
    plans = []
    for i, (h, w), (kh, kw) in _stage_grids(cfg, config, size):
        setting = config.stage(i)
        kv = (kh * kw, merged_size(kh, kw, setting.keys_values) if setting.keys_values else kh * kw)
        q = (h * w, merged_size(h, w, setting.queries) if setting.queries else h * w)
        plan = StagePlan(i + 1, (h, w), q, kv)
        reductions = (("queries", setting.queries, (h, w)), ("keys/values", setting.keys_values, (kh, kw)))
        for name, red, (gh, gw) in reductions:
            if red is not None and red.method == "bsm":
                dst, src = cell_partition(gh, gw, red.cell)
                r = merge_count(gh * gw, len(src), red.ratio)
                if len(dst) and r:
                    k = merge_ops.selection_size(len(src), r)
                    plan.notes.append(f"{name}: TopK over {len(src)} sources selects {k}")
        plans.append(plan)
    return plans


def describe(config: MergeConfig) -> str:
    return config.name if config.name in PRESETS and PRESETS[config.name] == config else config.to_json()
