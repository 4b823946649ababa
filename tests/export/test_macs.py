"""MAC counting from ONNX graphs: hand-computed small graphs, and SegFormer-B0 against its analytic count."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.export.passes.macs import count_macs
from segrt.runtime.errors import ConfigError


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _w(name, shape, dtype=np.float32):
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        return numpy_helper.from_array(rng.integers(-5, 5, shape).astype(dtype), name)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_strided_padded_conv():
    # out 5x6 positions x 8 filters, each a 3x3x3 dot product
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
               [_vi("x", [1, 3, 10, 12])], [_vi("y", None)], [_w("w", (8, 3, 3, 3))])
    assert count_macs(m).total == 1 * 8 * 5 * 6 * (3 * 3 * 3)


def test_depthwise_conv_counts_one_channel_per_filter():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1, 1, 1, 1])],
               [_vi("x", [2, 4, 6, 6])], [_vi("y", None)], [_w("w", (4, 1, 3, 3))])
    assert count_macs(m).total == 2 * 4 * 6 * 6 * 9


def test_batched_matmul_broadcasts_weights():
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_vi("a", [2, 3, 5, 7])], [_vi("y", None)],
               [_w("b", (7, 4))])
    assert count_macs(m).total == 2 * 3 * 5 * 4 * 7


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_with_transposes(trans_a):
    a_shape = [7, 5] if trans_a else [5, 7]
    m = _model([helper.make_node("Gemm", ["a", "b"], ["y"], transA=trans_a, transB=1)], [_vi("a", a_shape)],
               [_vi("y", None)], [_w("b", (4, 7))])
    assert count_macs(m).total == 5 * 4 * 7


def test_integer_kernels_count_like_their_float_forms():
    qconv = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    mmi = helper.make_node("MatMulInteger", ["a", "b"], ["z"])
    inits = [
        _w("w", (8, 3, 3, 3), np.int8),
        numpy_helper.from_array(np.array(0.1, np.float32), "xs"),
        numpy_helper.from_array(np.array(0, np.uint8), "xz"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.2, np.float32), "ys"),
        numpy_helper.from_array(np.array(0, np.uint8), "yz"),
        _w("b", (16, 6), np.int8),
    ]
    m = _model(
        [qconv, mmi],
        [_vi("x", [1, 3, 8, 8], TensorProto.UINT8), _vi("a", [1, 10, 16], TensorProto.UINT8)],
        [_vi("y", None, TensorProto.UINT8), _vi("z", None, TensorProto.INT32)],
        inits,
    )
    m.graph.input.pop()  # count_macs wants one image input: feed "a" from a constant instead
    m.graph.initializer.append(numpy_helper.from_array(np.ones((1, 10, 16), np.uint8), "a"))
    count = count_macs(m)
    assert count.by_op_type == {"QLinearConv": 8 * 8 * 8 * 27, "MatMulInteger": 10 * 6 * 16}


def test_dynamic_input_needs_a_shape_and_uses_it():
    m = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        [_vi("x", [1, 3, "H", "W"])],
        [_vi("y", None)],
        [_w("w", (4, 3, 1, 1))],
    )
    with pytest.raises(ConfigError):
        count_macs(m)
    assert count_macs(m, (1, 3, 20, 30)).total == 20 * 30 * 4 * 3


def test_data_dependent_shapes_are_read_by_running_the_graph():
    # Compress keeps the rows where the condition holds: static inference cannot know how many.
    keep = numpy_helper.from_array(np.array([1, 0, 1, 1, 0, 1], dtype=bool), "keep")
    nodes = [
        helper.make_node("Compress", ["x", "keep"], ["rows"], axis=0),
        helper.make_node("MatMul", ["rows", "w"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [6, 4])], [_vi("y", None)], [keep, _w("w", (4, 3))])
    count = count_macs(m)
    assert count.total == 4 * 3 * 4
    assert count.shape_source == "onnxruntime"


def analytic_segformer_macs(cfg, h: int, w: int) -> int:
    """MACs of a SegFormer with the transformers-style head, written out from the paper's structure."""
    total, c_in, grids = 0, cfg.in_channels, []
    for s, c in enumerate(cfg.widths):
        k, st = cfg.patch_sizes[s], cfg.strides[s]
        h, w = (h + 2 * (k // 2) - k) // st + 1, (w + 2 * (k // 2) - k) // st + 1
        n = h * w
        total += n * c * c_in * k * k  # overlapping patch embedding
        sr = cfg.sr_ratios[s]
        m = (h // sr) * (w // sr) if sr > 1 else n
        hidden = c * cfg.mlp_ratios[s]
        per_block = (
            n * c * c  # q
            + (m * c * c * sr * sr if sr > 1 else 0)  # sequence-reduction conv
            + 2 * m * c * c  # k, v
            + 2 * n * m * c  # q @ k^T and attention @ v, summed over heads
            + n * c * c  # output projection
            + n * c * hidden
            + n * hidden * 9
            + n * hidden * c
        )  # fc1, 3x3 depth-wise, fc2
        total += cfg.depths[s] * per_block
        grids.append(n)
        c_in = c
    d = cfg.decoder_dim
    total += sum(n * c * d for n, c in zip(grids, cfg.widths))  # per-stage linear projections
    total += grids[0] * len(cfg.widths) * d * d  # 1x1 fuse conv at stride 4
    total += grids[0] * d * cfg.num_classes  # classifier
    return total


def test_segformer_b0_matches_analytic_count(random_b0, tmp_path):
    """A plain export (no segrt rewrites) of B0 counts exactly what the architecture prescribes."""
    from segrt.measure.peers import export_plain_onnx, to_transformers

    size = (128, 160)
    path = export_plain_onnx(to_transformers(random_b0.model, random_b0.metadata), tmp_path / "b0.onnx", size)
    count = count_macs(path)
    assert count.total == analytic_segformer_macs(random_b0.model.config, *size)
    assert set(count.by_op_type) <= {"Conv", "MatMul", "Gemm"}


def test_quantized_graph_counts_the_same_work(b0_onnx, camvid_root, tmp_path):
    from segrt.export.passes.quantize import quantize_int8

    q = quantize_int8(b0_onnx, tmp_path / "int8.onnx", camvid_root / "train", 2, show_progress=False)
    fp32, int8 = count_macs(b0_onnx), count_macs(q.path)
    assert fp32.total > 0
    assert int8.total == fp32.total
