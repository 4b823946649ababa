"""The exported GELU is reordered so ONNX Runtime fuses it, without changing what the graph computes."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from segrt.export.passes.gelu_order import reorder_gelu


def exporter_order_gelu(half: float = 0.5) -> onnx.ModelProto:
    """GELU as torch's dynamo exporter writes it at opset 17: x * ((1 + erf(x / sqrt 2)) * 0.5)."""
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["a", "half"], ["h"]),
        helper.make_node("Mul", ["x", "h"], ["y"]),
    ]
    inits = [helper.make_tensor("sqrt2", TensorProto.FLOAT, [], [math.sqrt(2.0)]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("half", TensorProto.FLOAT, [], [half])]
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def ort_fused_ops(proto: onnx.ModelProto, tmp_path) -> list[str]:
    """Op types left after ONNX Runtime's extended (fusion) graph optimisations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_exporter_order_is_not_fused_but_reordered_is(tmp_path):
    original = exporter_order_gelu()
    assert "Erf" in ort_fused_ops(original, tmp_path)  # the reason this rewrite exists
    reordered = reorder_gelu(exporter_order_gelu())
    onnx.checker.check_model(reordered, full_check=True)
    assert ort_fused_ops(reordered, tmp_path) == ["Gelu"]


def test_reordered_gelu_computes_the_same_function():
    x = np.random.default_rng(0).normal(0.0, 3.0, (1, 64, 32)).astype(np.float32)
    np.testing.assert_allclose(
        run(reorder_gelu(exporter_order_gelu()), x), run(exporter_order_gelu(), x), rtol=1e-6, atol=1e-6
    )


def test_other_constants_are_left_alone():
    proto = reorder_gelu(exporter_order_gelu(half=0.4))  # not a GELU: fusing it would change the function
    assert [list(n.input) for n in proto.graph.node][-1] == ["x", "h"]


@pytest.fixture(scope="module")
def exported_ops(b0_onnx, tmp_path_factory):
    return onnx.load(str(b0_onnx)), ort_fused_ops(onnx.load(str(b0_onnx)), tmp_path_factory.mktemp("gelu"))


def test_every_exported_gelu_fuses(exported_ops):
    proto, fused = exported_ops
    erfs = sum(n.op_type == "Erf" for n in proto.graph.node)
    assert erfs == 8  # one per Mix-FFN of MiT-B0 (2 blocks x 4 stages)
    assert "Erf" not in fused and fused.count("Gelu") + fused.count("BiasGelu") == erfs
