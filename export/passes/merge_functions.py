"""The ONNX definitions of segrt's token-merge ops (model-local functions), without torch.

:mod:`segrt.export.methods.merging.ops` has the ops' PyTorch reference and export translation; their
bodies live here so that engine building and the graph passes, which must not need torch, can attach,
inspect and swap them. The op contract is in that module's doc.

Two bodies of ``TokenMerge`` compute the same thing and differ only in how the merged sums are
accumulated (the mean is sum / count either way; never reduction "mean", which the dynamo exporter drops):
- ``"elements"``: ScatterElements with reduction "add" over every (token, channel) element. Portable:
  TensorRT runs it through its ScatterElements plugin. ONNX Runtime's CPU kernel computes every element's
  index and is slow: 0.71 ms for 1024 tokens of 160 channels into 103 (2 threads, measured here).
- ``"dense"``: a one-hot (B, N, N') assignment matrix and one MatMul, (B, N', N) x (B, N, C). Exact up to the
  order of the float additions for finite inputs (a NaN or inf token turns that channel of every merged
  token of its image into NaN, 0 x inf being NaN; the elements body keeps it in its own token), deterministic
  (each output is summed by one thread), and fast while N' is small: the sums of that merge in 0.15 ms.
  Only written where every call site qualifies (:func:`dense_fits`: the one-hot costs N x N' per image).
  ScatterND with reduction "add", one row per
  token, would be faster still, but ONNX Runtime's CPU kernel splits the rows over its threads and rows
  that merge into the same token race: wrong sums in 11 of 50 runs at 2 threads. Not used.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from segrt.runtime.errors import ExportError
from segrt.trt_limits import TOPK_LIMIT  # TensorRT: TopK needs K < 3840

DOMAIN = "segrt"
DOMAIN_VERSION = 1
SELECT_ROUNDS = 2  # masked TopK rounds in the bodies: any selection of up to 2 * TOPK_LIMIT tokens
SUMS = ("elements", "dense")  # how TokenMerge accumulates the merged sums (module doc)
DENSE_MAX_OUT = 256  # merged tokens per image up to which the one-hot MatMul beats ScatterElements here
DENSE_MAX_ONEHOT = 1 << 20  # N x N' one-hot entries per image (4 MB of float)
_NORM_EPS = 1e-12  # the PyTorch reference (ops.py) uses the same floor


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


def _merge_function(opset: int, sums_form: str = "elements") -> onnx.FunctionProto:
    if sums_form not in SUMS:
        raise ExportError(f"unknown TokenMerge sums form {sums_form!r}; expected one of {', '.join(SUMS)}")
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
    # --- merge: a true mean as sum / count (reduction "add"; never "mean")
    n_out = b.op("Add", nd, keep)
    slot3 = b.op("Unsqueeze", "slot", b.const([-1]))
    if sums_form == "dense":  # one-hot (B, N, N') of the slots; sums = one-hot^T x, one MatMul
        targets = b.op("Range", b.const(0), b.op("Squeeze", n_out, b.const([0])), b.const(1))
        onehot = b.op("CastLike", b.op("Equal", slot3, targets), "x")
        sums = b.op("MatMul", b.op("Transpose", onehot, perm=[0, 2, 1]), "x")
    else:
        zeros = b.op("CastLike", b.op("ConstantOfShape", b.op("Concat", batch, n_out, channels, axis=0)), "x")
        sums = b.op("ScatterElements", zeros, b.op("Expand", slot3, b.op("Shape", "x")), "x", axis=1,
                    reduction="add")
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


def function_protos(opset: int, sums_form: str = "elements") -> list[onnx.FunctionProto]:
    return [_merge_function(opset, sums_form), _unmerge_function(opset)]


# ----------------------------------------------------------------------------- ONNX: model post-processing


def uses_merge_ops(proto: onnx.ModelProto) -> bool:
    return any(node.domain == DOMAIN for node in proto.graph.node)


def attach_local_functions(proto: onnx.ModelProto, sums_form: str = "elements") -> onnx.ModelProto:
    """Define the ``segrt`` ops used by the graph as model-local functions (no-op without them); an existing
    definition is replaced, so this also swaps one TokenMerge body for the other."""
    if not uses_merge_ops(proto):
        return proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ExportError("exported graph declares no default-domain opset")
    used = {node.op_type for node in proto.graph.node if node.domain == DOMAIN}
    bodies = function_protos(opset, sums_form)
    known = {f.name for f in bodies}
    if used - known:
        raise ExportError(f"graph uses segrt ops without a definition: {sorted(used - known)}")
    kept = [f for f in proto.functions if f.domain != DOMAIN]
    del proto.functions[:]
    proto.functions.extend(kept + [f for f in bodies if f.name in used])
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return proto


def merge_sums_form(proto: onnx.ModelProto) -> str | None:
    """Which TokenMerge body ``proto`` carries ("elements", "dense", or "nd": the ScatterND "add" body that
    segrt wrote for a few commits before its race was found; it is swapped like a CPU body), or None."""
    for function in proto.functions:
        if function.domain == DOMAIN and function.name == "TokenMerge":
            if any(node.op_type == "ScatterND" for node in function.node):
                return "nd"
            return "dense" if any(node.op_type == "MatMul" and node.input[1] == "x" for node in function.node) \
                else "elements"
    return None


def _constant_length(proto: onnx.ModelProto, name: str) -> int | None:
    """Length of a constant index set; None when unknown or when a caller could feed another (a graph input)."""
    if name in {i.name for i in proto.graph.input}:
        return None
    for init in proto.graph.initializer:
        if init.name == name:
            return int(np.prod(init.dims)) if init.dims else 1
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return int(np.prod(attr.t.dims)) if attr.t.dims else 1
                if attr.name == "value_ints":
                    return len(attr.ints)
                if attr.name == "value_int":
                    return 1
    return None


def dense_fits(proto: onnx.ModelProto) -> bool:
    """Whether every TokenMerge of ``proto``'s graph has constant token sets small enough for the dense body."""
    calls = [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == "TokenMerge"]
    for node in calls:
        nd, ns = (_constant_length(proto, name) for name in node.input[2:4])
        r = next((a.i for a in node.attribute if a.name == "r"), None)
        if nd is None or ns is None or r is None:
            return False
        n_out = nd + ns - r
        if n_out > DENSE_MAX_OUT or (nd + ns) * n_out > DENSE_MAX_ONEHOT:
            return False
    return bool(calls)


def with_merge_sums(proto: onnx.ModelProto, sums_form: str) -> tuple[onnx.ModelProto, bool]:
    """``proto`` with its TokenMerge body in ``sums_form`` (a copy when it changes), and whether it changed;
    "dense" only where :func:`dense_fits` (an "nd" body that does not fit becomes "elements")."""
    current = merge_sums_form(proto)
    if sums_form == "dense" and not dense_fits(proto):
        sums_form = "elements"
    if current is None or current == sums_form:
        return proto, False
    copy = onnx.ModelProto.FromString(proto.SerializeToString())
    return attach_local_functions(copy, sums_form), True
