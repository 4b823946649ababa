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
from onnx import TensorProto, defs, helper

from segrt.runtime.errors import ConfigError, ExportError
from segrt.trt_limits import TOPK_LIMIT  # TensorRT: TopK needs K < 3840

DOMAIN = "segrt"
DOMAIN_VERSION = 1
SELECT_ROUNDS = 2  # masked TopK rounds in the bodies: any selection of up to 2 * TOPK_LIMIT tokens
_NORM_EPS = 1e-12


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


# ----------------------------------------------------------------------------- ONNX: function bodies


class _Body:
    """Tiny builder for function bodies: ``b.op("Add", a, c)`` returns the new value's name."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.count = 0

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        names = [f"{self.prefix}{self.count}_{op_type}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=TensorProto.INT64) -> str:
        """A list becomes a 1-D tensor, a bare number a 0-D scalar."""
        values = value if isinstance(value, list) else [value]
        dims = [len(values)] if isinstance(value, list) else []
        return self.op("Constant", value=helper.make_tensor("v", dtype, dims, values))

    def attr_const(self, attr: str) -> str:
        """A 1-element int64 tensor holding the function attribute ``attr``."""
        node = helper.make_node("Constant", [], [f"{self.prefix}{self.count}_{attr}"])
        self.count += 1
        node.attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT, ref_attr_name=attr))
        self.nodes.append(node)
        return self.op("Unsqueeze", node.output[0], self.const([0]))


def _merge_function(opset: int) -> onnx.FunctionProto:
    b = _Body("m")
    fp32 = TensorProto.FLOAT
    # --- cosine similarity of every source to every destination
    ss = b.op("ReduceSum", b.op("Mul", "metric", "metric"), b.const([-1]), keepdims=1)
    norm = b.op("Max", b.op("Sqrt", ss), b.op("CastLike", b.const([_NORM_EPS], fp32), "metric"))
    unit = b.op("Div", "metric", norm)
    src = b.op("Gather", unit, "src_index", axis=1)
    dst = b.op("Gather", unit, "dst_index", axis=1)
    scores = b.op("MatMul", src, b.op("Transpose", dst, perm=[0, 2, 1]))  # (B, Ns, Nd)
    best, best_dst = b.op("TopK", b.op("Cast", scores, to=fp32), b.const([1]), axis=-1, outputs=2)
    best = b.op("Squeeze", best, b.const([-1]))
    best_dst = b.op("Squeeze", best_dst, b.const([-1]))
    # --- the r best sources are merged; TopK selects whichever of merged/kept is smaller
    r = b.attr_const("r")
    nd = b.op("Shape", "dst_index")
    ns = b.op("Shape", "src_index")
    keep = b.op("Sub", ns, r)
    flip = b.op("Less", keep, r)
    k = b.op("Min", r, keep)
    key = b.op("Mul", best, b.op("Where", flip, b.const([-1.0], fp32), b.const([1.0], fp32)))
    chosen = b.op("ConstantOfShape", b.op("Shape", key), value=helper.make_tensor("z", fp32, [1], [0.0]))
    limit = b.const([TOPK_LIMIT])
    remaining = k
    for _ in range(SELECT_ROUNDS):
        size = b.op("Min", remaining, limit)
        remaining = b.op("Sub", remaining, size)
        # TopK needs K >= 1: an empty round picks one unchosen token and writes 0 there (a no-op)
        used = b.op("Cast", b.op("Greater", size, b.const([0])), to=fp32)
        masked = b.op("Sub", key, b.op("Mul", chosen, b.const([4.0], fp32)))
        _, idx = b.op("TopK", masked, b.op("Max", size, b.const([1])), axis=-1, largest=1, sorted=1, outputs=2)
        chosen = b.op("ScatterElements", chosen, idx, b.op("Expand", used, b.op("Shape", idx)), axis=-1)
    merged_mask = b.op("Abs", b.op("Sub", chosen, b.op("Cast", flip, to=fp32)))
    # --- slots: destinations 0..Nd-1, merged sources their destination, kept sources after Nd
    kept_rank = b.op("Sub", b.op("CumSum", b.op("Sub", b.const([1.0], fp32), merged_mask), b.const(1)),
                     b.const([1.0], fp32))
    kept_slot = b.op("Add", b.op("Cast", kept_rank, to=TensorProto.INT64), nd)
    src_slot = b.op("Where", b.op("Cast", merged_mask, to=TensorProto.BOOL), best_dst, kept_slot)
    batch = b.op("Shape", "x", start=0, end=1)
    n = b.op("Shape", "x", start=1, end=2)
    channels = b.op("Shape", "x", start=2, end=3)
    dst_slot = b.op("Expand", b.op("Unsqueeze", b.op("Range", b.const(0), b.op("Squeeze", nd, b.const([0])),
                                                     b.const(1)), b.const([0])),
                    b.op("Concat", batch, nd, axis=0))
    positions = b.op("Expand", b.op("Unsqueeze", b.op("Concat", "dst_index", "src_index", axis=0), b.const([0])),
                     b.op("Concat", batch, n, axis=0))
    empty_slots = b.op("ConstantOfShape", b.op("Concat", batch, n, axis=0),
                       value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
    b.nodes.append(helper.make_node("ScatterElements", [empty_slots, positions,
                                                        b.op("Concat", dst_slot, src_slot, axis=1)], ["slot"], axis=1))
    # --- merge: a true mean as sum / count (ScatterElements "add"; never "mean")
    n_out = b.op("Add", nd, keep)
    slot3 = b.op("Unsqueeze", "slot", b.const([-1]))
    zeros = b.op("CastLike", b.op("ConstantOfShape", b.op("Concat", batch, n_out, channels, axis=0)), "x")
    sums = b.op("ScatterElements", zeros, b.op("Expand", slot3, b.op("Shape", "x")), "x", axis=1, reduction="add")
    one = b.const([1])
    zero_counts = b.op("CastLike", b.op("ConstantOfShape", b.op("Concat", batch, n_out, one, axis=0)), "x")
    ones = b.op("CastLike", b.op("ConstantOfShape", b.op("Concat", batch, n, one, axis=0),
                                 value=helper.make_tensor("o", fp32, [1], [1.0])), "x")
    counts = b.op("ScatterElements", zero_counts, slot3, ones, axis=1, reduction="add")
    b.nodes.append(helper.make_node("Div", [sums, counts], ["merged"]))
    return helper.make_function(DOMAIN, "TokenMerge", ["x", "metric", "dst_index", "src_index"], ["merged", "slot"],
                                b.nodes, [helper.make_opsetid("", opset)], attributes=["r"],
                                doc_string="Bipartite soft matching: mean-merge the r sources most similar to a "
                                           "destination.")


def _unmerge_function(opset: int) -> onnx.FunctionProto:
    b = _Body("u")
    index_shape = b.op("Concat", b.op("Shape", "slot"), b.op("Shape", "y", start=2), axis=0)
    index = b.op("Expand", b.op("Unsqueeze", "slot", b.const([-1])), index_shape)
    b.nodes.append(helper.make_node("GatherElements", ["y", index], ["out"], axis=1))
    return helper.make_function(DOMAIN, "TokenUnmerge", ["y", "slot"], ["out"], b.nodes,
                                [helper.make_opsetid("", opset)],
                                doc_string="Give every token position the output of the token it was merged into.")


def function_protos(opset: int) -> list[onnx.FunctionProto]:
    return [_merge_function(opset), _unmerge_function(opset)]


# ----------------------------------------------------------------------------- ONNX: model post-processing


def uses_merge_ops(proto: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in proto.graph.node)


def attach_local_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Define the ``segrt`` ops used by the graph as model-local functions (no-op without them)."""
    if not uses_merge_ops(proto):
        return proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ExportError("exported graph declares no default-domain opset")
    used = {node.op_type for node in proto.graph.node if node.domain == DOMAIN}
    known = {f.name for f in function_protos(opset)}
    if used - known:
        raise ExportError(f"graph uses segrt ops without a definition: {sorted(used - known)}")
    kept = [f for f in proto.functions if f.domain != DOMAIN]
    del proto.functions[:]
    proto.functions.extend(kept + [f for f in function_protos(opset) if f.name in used])
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return proto


def inline_merge_ops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the ``segrt`` function calls by their standard-op bodies and drop the definitions.

    The inlined shape arithmetic is then constant-folded (onnxscript's optimiser), so every TopK K
    becomes a constant that TensorRT and static checkers can see.
    """
    import onnx.inliner
    import onnxscript

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
