"""Reorder the exported exact-GELU subgraph so ONNX Runtime fuses it into one Gelu kernel.

At opset 17 there is no Gelu operator, so the exporter writes ``x * 0.5 * (1 + erf(x / sqrt 2))`` as
five elementwise nodes, in the order ``Mul(x, Mul(Add(Erf(Div(x, sqrt2)), 1), 0.5))``. ONNX Runtime's
GeluFusion only matches ``Mul(Mul(x, Add(...)), 0.5)`` (or 0.5 applied to x first), so the exported order
runs unfused: five passes over the Mix-FFN's widest tensor instead of one. Measured on the bundled
model at 512x512, ONNX Runtime CPU, 2 threads, on a busy machine: the unfused nodes took 14% of the
kernel time, and the reordered graph's p50 latency was 1.09x lower in one interleaved `segrt bench` run.

The rewrite only moves the 0.5 to the outside (multiplication is commutative; the result differs by
rounding only), keeps standard ops (TensorRT fuses either order), and touches a subgraph only when its
constants really are sqrt(2), 1 and 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper


def _scalar(proto: onnx.ModelProto, name: str) -> float | None:
    for init in proto.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init)
            return float(value.reshape(-1)[0]) if value.size == 1 else None
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    value = numpy_helper.to_array(attr.t)
                    return float(value.reshape(-1)[0]) if value.size == 1 else None
                if attr.name == "value_float":
                    return float(attr.f)
    return None


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a binary node that is not ``name`` (None if ``name`` is not an input)."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _is(value: float | None, expected: float) -> bool:
    return value is not None and bool(np.isclose(value, expected, rtol=1e-6, atol=0.0))


def reorder_gelu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every exported GELU into the order ONNX Runtime fuses; returns the same (mutated) proto."""
    graph = proto.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str) -> onnx.NodeProto | None:
        nodes = consumers.get(name, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type else None

    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        div = producers.get(erf.input[0])
        add = only_consumer(erf.output[0], "Add")
        half = add and only_consumer(add.output[0], "Mul")
        outer = half and only_consumer(half.output[0], "Mul")
        if div is None or div.op_type != "Div" or add is None or half is None or outer is None:
            continue
        x = div.input[0]
        if (
            not _is(_scalar(proto, div.input[1]), math.sqrt(2.0))
            or not _is(_scalar(proto, _other(add, erf.output[0]) or ""), 1.0)
            or not _is(_scalar(proto, _other(half, add.output[0]) or ""), 0.5)
            or _other(outer, half.output[0]) != x
        ):
            continue
        constant_half = _other(half, add.output[0])
        half.input[:] = [x, add.output[0]]  # x * (1 + erf(x / sqrt 2)) ...
        outer.input[:] = [half.output[0], constant_half]  # ... * 0.5
    return proto
