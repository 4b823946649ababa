"""LayerNorm as ONNX Runtime's CPU provider runs it fastest, and back for TensorRT.

ONNX Runtime's CPU LayerNormalization kernel splits its rows over the thread pool, and on SegFormer's
stride-4 tokens (16384 rows of 32 channels at 512x512) the split costs more than it saves: measured here
(ONNX Runtime 1.32, 2 threads) one such node takes 1.08 ms with 2 threads and 0.51 ms with 1, and
LayerNorms were a quarter of camvid-b0-p27's kernel time (its first stage's five, 18%). InstanceNormalization over the
token axis computes the same normalisation (each token's channels, biased variance, the same epsilon)
in 0.36 ms: a ``(N, S, C)`` tensor read as ``N`` instances of ``S`` channels with ``C`` values each.

The rewrite (:func:`to_instance_norm`):
- a LayerNormalization over the last axis of a 3-D tensor, with constant scale and bias and ``C`` at
  most ``max_channels``, becomes InstanceNormalization with unit scale and zero bias over the ``S`` axis;
- the LayerNorm's own scale and bias are multiplied into its consumers where that is exact: a MatMul
  with a constant ``(C, D)`` weight (its bias Add absorbs ``bias @ W``), or ``Transpose(0, 2, 1) ->
  Reshape -> Conv`` without padding and with one group (the sequence-reduction convolution); any other
  consumer (a residual Add, a padded convolution) gets them as one Mul and one Add instead.

The nodes it adds are named ``segrt_norm/...``. :func:`to_layer_norm` turns every such InstanceNormalization
back into a LayerNormalization: with its own scale and bias where they were kept as a Mul and an Add, with unit
scale and zero bias where they were folded (exact: the folded weights stay), so TensorRT gets the LayerNorm
pattern it fuses and keeps in FP32 (through :mod:`.cpu_form`, which ``segrt build``, the Q/DQ quantizer and the
FP16 pass call). Standard ONNX ops only.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from segrt.export.passes.node_attrs import node_attr
from segrt.runtime.errors import ExportError

PREFIX = "segrt_norm/"
MAX_CHANNELS = 64  # stride-4 and stride-8 stages of B0; wider LayerNorms run as fast natively (see module doc)


class _Graph:
    """Producers, consumers and constant tensors of one graph, kept current by the edits below."""

    def __init__(self, proto: onnx.ModelProto):
        self.graph = proto.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.shapes: dict[str, list[int | None]] = {}
        inferred = onnx.shape_inference.infer_shapes(proto)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self._counter = 0

    def const(self, name: str) -> np.ndarray | None:
        init = self.inits.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def add_const(self, hint: str, value: np.ndarray) -> str:
        self._counter += 1
        name = f"{PREFIX}{hint}_{self._counter}"
        while name in self.inits:  # a model rewritten before has names of this pass already
            self._counter += 1
            name = f"{PREFIX}{hint}_{self._counter}"
        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


def _matmul_fold(g: _Graph, node: onnx.NodeProto, out: str):
    """The edit that moves (scale, shift) into ``node`` if it is ``MatMul(out, W)`` with constant ``W``."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[0] != out:
        return None
    weight = g.const(node.input[1])
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
        return None
    add = g.sole_consumer(node.output[0])
    bias_slot = None
    if add is not None and add.op_type == "Add":
        other = 1 if add.input[0] == node.output[0] else 0
        bias = g.const(add.input[other])
        if bias is not None and bias.shape == (weight.shape[1],):
            bias_slot = (add, other, bias)

    def apply(scale: np.ndarray, shift: np.ndarray) -> None:
        node.input[1] = g.add_const("weight", (scale.astype(np.float64)[:, None] * weight).astype(np.float32))
        moved = shift.astype(np.float64) @ weight.astype(np.float64)
        if bias_slot is not None:
            add, other, bias = bias_slot
            add.input[other] = g.add_const("bias", (bias + moved).astype(np.float32))
        elif np.any(moved):
            raw = node.output[0]
            node.output[0] = raw + "/segrt_norm_unbiased"
            add_node = helper.make_node("Add", [node.output[0], g.add_const("bias", moved.astype(np.float32))], [raw],
                                        name=f"{PREFIX}{node.name}/bias")
            g.graph.node.insert(list(g.graph.node).index(node) + 1, add_node)

    return apply


def _conv_fold(g: _Graph, node: onnx.NodeProto, out: str, channels: int):
    """The edit for ``Transpose(0, 2, 1) -> Reshape(N, C, H, W) -> Conv`` (no padding, one group): the
    sequence-reduction path. Zero padding would see the shift where the LayerNorm's output has none."""
    if node.op_type != "Transpose" or list(node_attr(node, "perm", [])) != [0, 2, 1]:
        return None
    reshape = g.sole_consumer(node.output[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    shape, tokens = g.shapes.get(reshape.output[0]), g.shapes.get(out)
    # (N, C, S) -> (N, C, H, W) keeps every channel's tokens together only with the same N and H * W == S
    if not shape or len(shape) != 4 or shape[1] != channels or not tokens or shape[0] != tokens[0]:
        return None
    height, width, length = shape[2], shape[3], tokens[1]
    if height is not None and width is not None and length is not None and height * width != length:
        return None
    convs = g.consumers.get(reshape.output[0], [])
    if not convs or reshape.output[0] in g.outputs:
        return None
    plans = []
    for conv in convs:
        weight = g.const(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
        bias = g.const(conv.input[2]) if weight is not None and len(conv.input) > 2 and conv.input[2] else None
        if (weight is None or weight.dtype != np.float32 or weight.shape[1] != channels
                or node_attr(conv, "group", 1) != 1 or any(node_attr(conv, "pads", [0]))
                or node_attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            return None
        plans.append((conv, weight, bias))

    def apply(scale: np.ndarray, shift: np.ndarray) -> None:
        for conv, weight, bias in plans:
            conv.input[1] = g.add_const("weight", (weight * scale.astype(np.float32)[None, :, None, None]))
            moved = np.einsum("oihw,i->o", weight.astype(np.float64), shift.astype(np.float64))
            base = bias.astype(np.float64) if bias is not None else np.zeros(weight.shape[0])
            new_bias = g.add_const("bias", (base + moved).astype(np.float32))
            if len(conv.input) > 2:
                conv.input[2] = new_bias
            else:
                conv.input.append(new_bias)

    return apply


def _candidate(g: _Graph, node: onnx.NodeProto, max_channels: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
        return None
    if len([o for o in node.output if o]) != 1 or len(node.input) < 2:
        return None
    shape = g.shapes.get(node.input[0])
    if not shape or len(shape) != 3 or shape[2] is None or node_attr(node, "axis", -1) not in (-1, 2):
        return None
    channels = shape[2]
    scale = g.const(node.input[1])
    shift = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(channels, np.float32)
    if scale is None or shift is None or scale.shape != (channels,) or shift.shape != (channels,):
        return None
    if scale.dtype != np.float32 or channels > max_channels:
        return None
    return channels, scale, shift


def to_instance_norm(proto: onnx.ModelProto, max_channels: int = MAX_CHANNELS) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` with its narrow LayerNorms as InstanceNormalization (see the module doc), and how
    many were rewritten. Nodes inside local functions are left alone."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    g = _Graph(proto)
    rewritten = 0
    unit: dict[int, tuple[str, str]] = {}
    for node in list(g.graph.node):
        found = _candidate(g, node, max_channels)
        if found is None:
            continue
        channels, scale, shift = found
        out = node.output[0]
        users = [] if out in g.outputs else g.consumers.get(out, [])
        folds = [_matmul_fold(g, user, out) or _conv_fold(g, user, out, channels) for user in users]
        tokens = g.shapes[node.input[0]][1]
        base = f"{PREFIX}{node.name or 'layernorm'}"
        extra: list[onnx.NodeProto] = []
        if tokens is not None:  # one pair per length, shared by the nodes that use it
            if tokens not in unit:
                unit[tokens] = (g.add_const("ones", np.ones(tokens, np.float32)),
                                g.add_const("zeros", np.zeros(tokens, np.float32)))
            ones, zeros = unit[tokens]
        else:  # sequence length known only at run time: unit scale and zero bias of that length
            ones, zeros = f"{base}/ones", f"{base}/zeros"
            extra += [helper.make_node("Shape", [node.input[0]], [f"{base}/tokens"], name=f"{base}/tokens", start=1,
                                       end=2),
                      helper.make_node("ConstantOfShape", [f"{base}/tokens"], [ones], name=f"{base}/ones",
                                       value=numpy_helper.from_array(np.ones(1, np.float32))),
                      helper.make_node("ConstantOfShape", [f"{base}/tokens"], [zeros], name=f"{base}/zeros",
                                       value=numpy_helper.from_array(np.zeros(1, np.float32)))]
        folded = bool(users) and all(folds)
        normed = out if folded else f"{base}/normalized"
        extra.append(helper.make_node("InstanceNormalization", [node.input[0], ones, zeros], [normed],
                                      name=f"{base}/instance_norm", epsilon=float(node_attr(node, "epsilon", 1e-5))))
        if folded:
            for apply in folds:
                apply(scale, shift)
        else:
            extra += [helper.make_node("Mul", [normed, g.add_const("scale", scale)], [f"{base}/scaled"],
                                       name=f"{base}/scale"),
                      helper.make_node("Add", [f"{base}/scaled", g.add_const("shift", shift.astype(np.float32))],
                                       [out], name=f"{base}/shift")]
        index = list(g.graph.node).index(node)
        g.graph.node.remove(node)
        for offset, new in enumerate(extra):
            g.graph.node.insert(index + offset, new)
        rewritten += 1
    _drop_unused_initializers(g.graph)
    return proto, rewritten


def to_layer_norm(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` with every InstanceNormalization :func:`to_instance_norm` made turned back into a
    LayerNormalization over the last axis (exact; its scale and bias as :func:`_affine_after` finds them), and how
    many."""
    if not has_instance_norms(proto):
        return proto, 0
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    g = _Graph(proto)
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "InstanceNormalization" or not node.name.startswith(PREFIX):
            continue
        shape = g.shapes.get(node.input[0])
        channels = shape[2] if shape and len(shape) == 3 else None
        if channels is None:
            raise ExportError(f"{node.name}: cannot tell the normalised size of {node.input[0]}")
        scale, shift, out, affine = _affine_after(g, node, channels)
        layer_norm = helper.make_node(
            "LayerNormalization", [node.input[0], g.add_const("scale", scale), g.add_const("bias", shift)],
            [out], name=node.name.removesuffix("/instance_norm") + "/layer_norm", axis=-1,
            epsilon=float(node_attr(node, "epsilon", 1e-5)))
        position = list(g.graph.node).index(node)
        for done in [node, *affine]:
            g.graph.node.remove(done)
        g.graph.node.insert(position, layer_norm)
        count += 1
    # a dynamic-length model's run-time ones/zeros (ConstantOfShape of Shape) are no longer used
    for op_type in ("ConstantOfShape", "Shape"):
        used = {name for node in g.graph.node for name in node.input} | {o.name for o in g.graph.output}
        for node in list(g.graph.node):
            if node.name.startswith(PREFIX) and node.op_type == op_type and node.output[0] not in used:
                g.graph.node.remove(node)
    _drop_unused_initializers(g.graph)
    return proto, count


def _affine_after(g: _Graph, node: onnx.NodeProto, channels: int):
    """The scale and shift :func:`to_instance_norm` left as a Mul and an Add after ``node`` (they go back into the
    LayerNorm, so the layer TensorRT keeps in FP32 applies them again), or unit scale and zero shift where they
    were folded into the next layer (the folded weights stay)."""
    mul = g.sole_consumer(node.output[0])
    add = g.sole_consumer(mul.output[0]) if mul is not None and mul.op_type == "Mul" else None
    if (mul is not None and add is not None and add.op_type == "Add" and mul.name.startswith(PREFIX)
            and add.name.startswith(PREFIX) and mul.input[0] == node.output[0] and add.input[0] == mul.output[0]):
        scale, shift = g.const(mul.input[1]), g.const(add.input[1])
        if scale is not None and shift is not None and scale.shape == shift.shape == (channels,):
            return scale, shift, add.output[0], [mul, add]
    return np.ones(channels, np.float32), np.zeros(channels, np.float32), node.output[0], []


def has_instance_norms(proto: onnx.ModelProto) -> bool:
    return any(n.op_type == "InstanceNormalization" and n.name.startswith(PREFIX) for n in proto.graph.node)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for attr_graph in (a.g for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH):
        used |= {name for node in attr_graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
