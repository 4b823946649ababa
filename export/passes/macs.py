"""Count multiply-accumulates (MACs) of an ONNX graph, so every tier (merged, quantized) is measured
by the same rule: the graph it actually ships.

Counted: Conv, ConvTranspose, MatMul, Gemm and their integer / fused forms (QLinearConv, ConvInteger,
QLinearMatMul, MatMulInteger, MatMulIntegerToFloat, FusedMatMul, FusedConv, FusedGemm). One MAC is
one multiply and one add; bias adds, normalisation, softmax, resizes and other element-wise work are
not counted (they are memory-bound and conventionally left out of "FLOPs" tables, which are 2 x MACs).

Model-local functions (segrt's token-merge ops) are inlined first, so the work inside them counts.
Shapes come from ONNX shape inference with the input size made concrete; where inference cannot
resolve a shape (data-dependent reshapes in merged graphs) the graph is run once with ONNX Runtime
and the real shapes are read back, so a count is never a guess.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

from segrt.export.passes.frame_graph import is_frame_form, network_of
from segrt.export.passes.merge_functions import with_merge_sums
from segrt.runtime.errors import ConfigError, ModelLoadError

# op type -> (index of the data input "A"/"X", index of the weight input "B"/"W")
CONV_OPS = {"Conv": (0, 1), "FusedConv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
MATMUL_OPS = {"MatMul": (0, 1), "FusedMatMul": (0, 1), "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1),
              "QLinearMatMul": (0, 3)}
GEMM_OPS = {"Gemm": (0, 1), "FusedGemm": (0, 1)}
COUNTED = {**CONV_OPS, **MATMUL_OPS, **GEMM_OPS}


@dataclass
class MacCount:
    total: int
    by_op_type: dict[str, int]
    by_node: dict[str, int] = field(default_factory=dict)
    shape_source: str = "onnx"  # "onnx" (static inference) or "onnxruntime" (executed once)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "gmacs": self.gmacs,
            "by_op_type": self.by_op_type,
            "shape_source": self.shape_source,
        }


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        return proto
    try:
        return onnx.load(str(model))
    except Exception as exc:
        raise ModelLoadError(f"{model}: cannot read ONNX model ({exc})") from exc


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _fix_input_shape(proto: onnx.ModelProto, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Make the (single) image input's dimensions concrete; returns the shape used."""
    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise ModelLoadError(f"expected one graph input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    current = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if shape is None:
        if current and current[0] is None and all(d is not None for d in current[1:]):
            shape = (1, *(int(d) for d in current[1:] if d is not None))  # only the batch is open: one image
        elif any(d is None for d in current):
            raise ConfigError(f"input {inputs[0].name} has dynamic dimensions {current}: pass the input shape")
        else:
            return tuple(current)  # type: ignore[arg-type]
    if len(shape) != len(current) or any(c is not None and c != s for c, s in zip(current, shape)):
        raise ConfigError(f"input shape {tuple(shape)} does not fit the model's {current}")
    for d, s in zip(dims, shape):
        d.ClearField("dim_param")
        d.dim_value = int(s)
    return tuple(int(s) for s in shape)


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # noqa: BLE001 - any inference failure just means: read the shapes by running the graph
        inferred = proto
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    return shapes


def _needed(node: onnx.NodeProto) -> list[str]:
    a, b = COUNTED[node.op_type]
    return [node.input[a], node.input[b], node.output[0]]


def _executed_shapes(proto: onnx.ModelProto, shape: tuple[int, ...], names: set[str]) -> dict[str, tuple[int, ...]]:
    """Run the graph once on zeros with ``names`` exposed as outputs and read their real shapes."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for name in sorted(names - existing):
        probe.graph.output.append(helper.ValueInfoProto(name=name))
    inp = _graph_inputs(probe)[0]
    dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    wanted = [o.name for o in sess.get_outputs() if o.name in names]
    values = sess.run(wanted, {inp.name: np.zeros(shape, dtype=dtype)})
    return {n: tuple(v.shape) for n, v in zip(wanted, values)}


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> int:
    """MACs of one counted node given the shapes of its data input, weight input and output."""
    a_idx, b_idx = COUNTED[node.op_type]
    a, w, y = shapes[node.input[a_idx]], shapes[node.input[b_idx]], shapes[node.output[0]]
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    if node.op_type == "ConvTranspose":
        # every input pixel scatters a (C_out / group) x kernel patch: N*C_in*spatial_in * W[1:] products
        return math.prod(a) * math.prod(w[1:])
    if node.op_type in CONV_OPS:
        # every output value is a dot product over (C_in / group) x kernel: W is (C_out, C_in/group, k...)
        return math.prod(y) * math.prod(w[1:])
    if node.op_type in GEMM_OPS:
        k = a[0] if attrs.get("transA", 0) else a[-1]
        return math.prod(y) * k
    k = a[-1] if len(a) > 1 else a[0]
    if node.op_type == "FusedMatMul" and attrs.get("transA", 0):
        k = a[-2]
    return math.prod(y) * k


def count_macs(model: str | Path | onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> MacCount:
    """MACs of one forward pass. ``input_shape`` (N, C, H, W) is required for dynamic models. A frame-form
    model is counted by its network (the frame's own size, which the pre- and post-processing scale with, is
    not part of the model)."""
    proto = _load(model)
    if is_frame_form(proto):
        proto = network_of(proto)
    proto, _ = with_merge_sums(proto, "elements")  # the CPU merge body's one-hot MatMul is bookkeeping, not work
    if proto.functions:  # model-local functions (segrt token-merge ops) hide MatMuls inside their bodies
        from onnx import inliner

        proto = inliner.inline_local_functions(proto)
    shape = _fix_input_shape(proto, input_shape)
    nodes = [n for n in proto.graph.node if n.op_type in COUNTED]
    unnamed = [i for i, n in enumerate(nodes) if not n.name]
    for i in unnamed:
        nodes[i].name = f"{nodes[i].op_type}_{i}"
    shapes = _static_shapes(proto)
    missing = {t for n in nodes for t in _needed(n) if t not in shapes}
    source = "onnx"
    if missing:
        shapes.update(_executed_shapes(proto, shape, missing))
        source = "onnxruntime"
    by_node = {n.name: node_macs(n, shapes) for n in nodes}
    by_type: Counter[str] = Counter()
    for n in nodes:
        by_type[n.op_type] += by_node[n.name]
    return MacCount(sum(by_node.values()), dict(by_type), by_node, source)
