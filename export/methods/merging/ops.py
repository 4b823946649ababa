"""Token merge and unmerge as PyTorch custom ops that export to ``segrt`` ONNX ops.

Two ops, in PyTorch (``torch.ops.segrt``) and in ONNX (domain ``segrt``, version 1):

``TokenMerge(x, metric, dst_index, src_index) -> (merged, slot)``, attribute ``r``
    Bipartite soft matching (Bolya et al. 2023, as used by Segformer++). ``dst_index``/``src_index``
    split the N token positions into destinations and sources (shape-only constants). Each source
    finds its most cosine-similar destination under ``metric``; the ``r`` sources with the highest
    similarity are merged into their destination by a true mean (the destination's own value
    included), the others stay. ``merged`` is (B, Nd + Ns - r, C): destinations first, then the
    unmerged sources in position order. ``slot`` (B, N) int64 says where each position went, which
    is all unmerge needs.
``TokenUnmerge(y, slot) -> out``
    ``out[b, n] = y[b, slot[b, n]]``: every position gets the output of the token it was merged into.

In the exported graph both are single custom-domain nodes whose definitions are attached as ONNX
model-local functions with standard-op bodies: ONNX Runtime runs them as they are, TensorRT's parser
inlines them (9.0+). :func:`inline_merge_ops` turns them into plain standard ops; ``--merge-ops plugin``
(:mod:`.plugin_form`) turns TokenMerge into TensorRT >= 10.9 AOT plugin nodes without a body (docs/plugins.md).

Export constraints honoured by the bodies: the mean is sum/count with ScatterElements reduction
"add" (reduction "mean" is dropped silently by the dynamo exporter); every TopK has K < 3840
(TensorRT's limit), selecting the smaller of the merged/kept sets and splitting the selection into
two masked rounds when needed; no randomness; int64 indices.
"""

from __future__ import annotations

import functools

import onnx
import torch
from onnx import defs

from segrt.export.passes.merge_functions import (  # noqa: F401  (the ONNX side, re-exported for callers)
    _NORM_EPS,
    DOMAIN,
    DOMAIN_VERSION,
    SELECT_ROUNDS,
    attach_local_functions,
    function_protos,
    uses_merge_ops,
    with_merge_sums,
)
from segrt.runtime.errors import ConfigError, ExportError
from segrt.trt_limits import TOPK_LIMIT  # TensorRT: TopK needs K < 3840


def selection_size(num_sources: int, r: int) -> int:
    """How many tokens one TopK pass must select: the merged set or, if smaller, the kept set."""
    return min(r, num_sources - r)


def check_merge_size(num_sources: int, r: int) -> None:
    if not 0 <= r <= num_sources:
        raise ConfigError(f"cannot merge {r} of {num_sources} source tokens")
    k = selection_size(num_sources, r)
    if k > SELECT_ROUNDS * TOPK_LIMIT:
        raise ConfigError(
            f"merging {r} of {num_sources} source tokens needs a {k}-token selection, more than "
            f"{SELECT_ROUNDS} TopK rounds of {TOPK_LIMIT} (TensorRT's limit) allow: "
            "use larger cells or a smaller input")


# ----------------------------------------------------------------------------- PyTorch reference


def _select(key: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 float mask of the ``k`` largest entries per row, in TopK rounds of at most TOPK_LIMIT
    (the same rounds the ONNX body runs, so both pick the same set)."""
    chosen = torch.zeros_like(key)
    first = min(k, TOPK_LIMIT)
    for size in (first, k - first):
        if size > 0:
            # cosine scores lie in [-1, 1]: subtracting 4 puts every chosen token below every other
            # stable sort, not topk: among equal keys the lower index comes first, as ONNX TopK orders them
            idx = torch.sort(key - 4.0 * chosen, dim=-1, descending=True, stable=True).indices[..., :size]
            chosen.scatter_(-1, idx, 1.0)
    return chosen


@torch.library.custom_op("segrt::token_merge", mutates_args=())
def token_merge(x: torch.Tensor, metric: torch.Tensor, dst_index: torch.Tensor, src_index: torch.Tensor,
                r: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, n, c = x.shape
    nd, ns = dst_index.numel(), src_index.numel()
    check_merge_size(ns, r)
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    scores = unit.index_select(1, src_index) @ unit.index_select(1, dst_index).transpose(1, 2)  # (B, Ns, Nd)
    best, best_dst = scores.float().max(dim=-1)
    keep = ns - r
    flip = keep < r  # cheaper to select the sources that stay
    chosen = _select(-best if flip else best, keep if flip else r)
    merged_mask = 1.0 - chosen if flip else chosen
    kept_rank = torch.cumsum(1.0 - merged_mask, dim=1) - 1.0
    src_slot = torch.where(merged_mask > 0.5, best_dst, nd + kept_rank.long())
    slot = torch.empty(b, n, dtype=torch.int64, device=x.device)
    slot[:, dst_index] = torch.arange(nd, device=x.device).expand(b, nd)
    slot[:, src_index] = src_slot
    n_out = nd + keep
    sums = x.new_zeros(b, n_out, c).scatter_add_(1, slot.unsqueeze(-1).expand(b, n, c), x)
    counts = x.new_zeros(b, n_out, 1).scatter_add_(1, slot.unsqueeze(-1), x.new_ones(b, n, 1))
    return sums / counts, slot


@token_merge.register_fake
def _token_merge_fake(x, metric, dst_index, src_index, r):
    b, n, c = x.shape
    n_out = dst_index.shape[0] + src_index.shape[0] - r
    return x.new_empty(b, n_out, c), x.new_empty(b, n, dtype=torch.int64)


@torch.library.custom_op("segrt::token_unmerge", mutates_args=())
def token_unmerge(y: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    return torch.gather(y, 1, slot.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


@token_unmerge.register_fake
def _token_unmerge_fake(y, slot):
    return y.new_empty(y.shape[0], slot.shape[1], y.shape[2])


# ----------------------------------------------------------------------------- ONNX: export translation


def _param(name: str, type_str: str) -> defs.OpSchema.FormalParameter:
    return defs.OpSchema.FormalParameter(name, type_str)


_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
MERGE_SCHEMA = defs.OpSchema(
    "TokenMerge", DOMAIN, DOMAIN_VERSION,
    inputs=[_param("x", "T"), _param("metric", "T"), _param("dst_index", "tensor(int64)"),
            _param("src_index", "tensor(int64)")],
    outputs=[_param("merged", "T"), _param("slot", "tensor(int64)")],
    type_constraints=[("T", _FLOATS, "float tensors")],
    attributes=[defs.OpSchema.Attribute("r", defs.OpSchema.AttrType.INT, "number of source tokens merged away")],
)
UNMERGE_SCHEMA = defs.OpSchema(
    "TokenUnmerge", DOMAIN, DOMAIN_VERSION,
    inputs=[_param("y", "T"), _param("slot", "tensor(int64)")],
    outputs=[_param("out", "T")],
    type_constraints=[("T", _FLOATS, "float tensors")],
)


@functools.cache
def _onnx_ops():
    import onnxscript

    opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)
    return (onnxscript.values.Op(opset, "TokenMerge", MERGE_SCHEMA),
            onnxscript.values.Op(opset, "TokenUnmerge", UNMERGE_SCHEMA))


def _translate_merge(x, metric, dst_index, src_index, r: int):
    return _onnx_ops()[0](x, metric, dst_index, src_index, r=r)


def _translate_unmerge(y, slot):
    return _onnx_ops()[1](y, slot)


def translation_table() -> dict:
    """For ``torch.onnx.export(custom_translation_table=...)``: each op becomes one ``segrt`` node."""
    return {torch.ops.segrt.token_merge.default: _translate_merge,
            torch.ops.segrt.token_unmerge.default: _translate_unmerge}


def inline_merge_ops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the ``segrt`` function calls by their standard-op bodies and drop the definitions.

    The inlined shape arithmetic is then constant-folded (onnxscript's optimiser), so every TopK K
    becomes a constant that TensorRT and static checkers can see.
    """
    import onnx.inliner
    import onnxscript

    proto, _ = with_merge_sums(proto, "elements")  # inlined for any runtime, TensorRT included: portable sums
    inlined = onnx.inliner.inline_selected_functions(
        proto, [(f.domain, f.name) for f in proto.functions if f.domain == DOMAIN], exclude=False)
    del inlined.functions[:]
    inlined.functions.extend(f for f in proto.functions if f.domain != DOMAIN)
    kept = [o for o in inlined.opset_import if o.domain != DOMAIN]
    del inlined.opset_import[:]
    inlined.opset_import.extend(kept)
    try:
        return onnxscript.optimizer.optimize(inlined)
    except Exception as exc:
        raise ExportError(f"constant folding of the inlined merge ops failed: {type(exc).__name__}: {exc}") from exc
