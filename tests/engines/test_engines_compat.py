"""The static TensorRT compatibility checker on small graphs built to break one rule each, and on real exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.engines.compat import TOPK_MAX_K, check_model
from segrt.engines.targets import get_target

ORIN = get_target("jetson-orin")


def graph_model(nodes, inputs, outputs, initializers=(), functions=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    model.ir_version = 10
    return model


def image(name="x", shape=(1, 3, 32, 32), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def check(model, target=ORIN, version="10.3", precision="fp16", dla=False):
    return check_model(model, target, version, precision, dla)


def only(report, rule):
    found = report.find(rule)
    assert found, f"expected a {rule} issue in:\n{report.to_text()}"
    return found


def test_supported_graph_is_clean():
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="relu0")], [image()], [image("y")])
    report = check(model)
    assert report.clean, report.to_text()


def test_unsupported_op_names_the_node():
    model = graph_model([helper.make_node("Relu", ["x"], ["a"], name="relu0"),
                         helper.make_node("BitShift", ["a", "a"], ["y"], name="the_shift", direction="LEFT")],
                        [image(dtype=TensorProto.UINT32)], [image("y", dtype=TensorProto.UINT32)])
    issue = only(check(model), "unsupported-op")[0]
    assert issue.severity == "error" and issue.node == "the_shift" and issue.op_type == "BitShift"


def test_qoperator_ops_are_refused_with_a_hint():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    node = helper.make_node("QLinearConv", ["x", "s", "zp", "w", "s", "zp", "s", "zp"], ["y"], name="qconv")
    model = graph_model([node], [image(dtype=TensorProto.INT8)], [image("y", (1, 4, 32, 32), TensorProto.INT8)],
                        [w, scale, zp])
    issue = only(check(model, precision="int8"), "unsupported-op")[0]
    assert issue.node == "qconv" and "Q/DQ" in issue.message


def _topk(k: int):
    kk = numpy_helper.from_array(np.array([k], np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_node", axis=-1)
    return graph_model([node], [image("x", (1, 8192))],
                       [image("v", (1, k)), image("i", (1, k), TensorProto.INT64)], [kk])


def test_topk_k_limit():
    assert check(_topk(TOPK_MAX_K - 1)).find("topk") == []
    issue = only(check(_topk(TOPK_MAX_K)), "topk")[0]
    assert issue.severity == "error" and issue.node == "topk_node" and str(TOPK_MAX_K) in issue.message


def test_topk_with_a_runtime_k_is_fine_when_bounded():
    limit = numpy_helper.from_array(np.array([TOPK_MAX_K - 1], np.int64), "limit")
    nodes = [helper.make_node("Shape", ["x"], ["n"], start=1, end=2),
             helper.make_node("Min", ["n", "limit"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], name="bounded", axis=1)]
    model = graph_model(nodes, [image("x", (1, "N"))], [image("v", (1, "K")), image("i", (1, "K"), TensorProto.INT64)],
                        [limit])
    assert check(model).find("topk") == []
    nodes[1] = helper.make_node("Identity", ["n"], ["k"])
    assert only(check(graph_model(nodes, [image("x", (1, "N"))], [image("v", (1, "K")),
                                                                   image("i", (1, "K"), TensorProto.INT64)], [limit])),
                "topk")[0].severity == "warning"


def test_k_from_a_function_attribute_is_resolved_per_call():
    """Like segrt.TokenMerge: K is a Constant referring to the function attribute ``r`` of the caller."""
    k_node = helper.make_node("Constant", [], ["k"])
    k_node.attribute.append(helper.make_attribute_ref("value_ints", onnx.AttributeProto.INTS, ref_attr_name="r"))
    body = [k_node, helper.make_node("TopK", ["a", "k"], ["b", "idx"], name="select", axis=-1)]
    fn = helper.make_function("segrt", "Select", ["a"], ["b"], body, [helper.make_opsetid("", 17)], attributes=["r"])
    calls = [helper.make_node("Select", ["x"], ["y1"], name="small_call", domain="segrt", r=[8]),
             helper.make_node("Select", ["x"], ["y2"], name="huge_call", domain="segrt", r=[5000])]
    model = graph_model(calls, [image("x", (1, 8192))], [image("y1", (1, 8)), image("y2", (1, 5000))],
                        functions=[fn], extra_opsets=[("segrt", 1)])
    (issue,) = only(check(model), "topk")
    assert issue.node == "huge_call/select" and "K = 5000" in issue.message and issue.function == "segrt.Select"


def test_a_problem_in_a_function_body_is_reported_once_with_its_callers():
    body = [helper.make_node("ScatterElements", ["a", "i", "a"], ["b"], name="sum", reduction="add", axis=1)]
    fn = helper.make_function("segrt", "Merge", ["a", "i"], ["b"], body, [helper.make_opsetid("", 17)])
    idx = numpy_helper.from_array(np.zeros((1, 4), np.int64), "idx")
    calls = [helper.make_node("Merge", ["x", "idx"], [f"y{i}"], name=f"merge{i}", domain="segrt") for i in range(6)]
    model = graph_model(calls, [image("x", (1, 4))], [image(f"y{i}", (1, 4)) for i in range(6)], [idx],
                        functions=[fn], extra_opsets=[("segrt", 1)])
    (issue,) = only(check(model), "plugin-required")
    assert issue.node == "merge0/sum" and "called by merge0, merge1, merge2, merge3 and 2 more" in issue.message


def _resize(**attrs):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
    return graph_model([node], [image()], [image("y", (1, 3, 64, 64))], [scales])


@pytest.mark.parametrize("attrs", [{"mode": "cubic"}, {"mode": "linear", "antialias": 1},
                                   {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}])
def test_resize_rules(attrs):
    model = _resize(**attrs)
    issues = only(check(model), "resize")
    assert all(i.severity == "error" and i.node == "up" for i in issues)


def test_bilinear_resize_is_fine():
    assert check(_resize(mode="linear", coordinate_transformation_mode="half_pixel")).clean


def _scatter(op: str, reduction: str):
    idx = numpy_helper.from_array(np.zeros((1, 3, 4, 4), np.int64), "idx")
    node = helper.make_node(op, ["x", "idx", "x"], ["y"], name="scatter",
                            reduction=reduction) if op == "ScatterElements" \
        else helper.make_node(op, ["x", "idx4", "upd"], ["y"], name="scatter", reduction=reduction)
    if op == "ScatterElements":
        return graph_model([node], [image("x", (1, 3, 4, 4))], [image("y", (1, 3, 4, 4))], [idx])
    idx4 = numpy_helper.from_array(np.zeros((1, 1), np.int64), "idx4")
    upd = numpy_helper.from_array(np.zeros((1, 3, 4, 4), np.float32), "upd")
    return graph_model([node], [image("x", (1, 3, 4, 4))], [image("y", (1, 3, 4, 4))], [idx4, upd])


def test_scatter_elements_with_reduction_needs_the_plugin():
    issue = only(check(_scatter("ScatterElements", "add")), "plugin-required")[0]
    assert issue.severity == "warning" and issue.node == "scatter" and "plugin" in issue.message
    assert check(_scatter("ScatterElements", "none")).clean


def test_scatter_nd_reduction_is_an_error():
    issue = only(check(_scatter("ScatterND", "mul")), "scatternd")[0]
    assert issue.severity == "error" and issue.node == "scatter"


def test_int64_weights_beyond_int32_are_not_flagged_the_parser_keeps_int64_since_tensorrt_9():
    big = numpy_helper.from_array(np.array([2**40], np.int64), "big")
    add = helper.make_node("Add", ["i", "big"], ["y"], name="int_add")
    model = graph_model([add], [image("i", (1,), TensorProto.INT64)], [image("y", (1,), TensorProto.INT64)], [big])
    report = check(model)
    assert report.find("int64-weights") == [] and report.clean

    starts = numpy_helper.from_array(np.array([1], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([3], np.int64), "axes")
    sl = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="slice")
    model = graph_model([sl], [image()], [image("y", (1, 3, 32, 31))], [starts, ends, axes])
    assert check(model).find("int64-weights") == []


def test_dynamic_shapes_on_dla():
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="relu0")],
                        [image("x", ("N", 3, "H", "W"))], [image("y", ("N", 3, "H", "W"))])
    assert check(model).clean  # fine on the GPU
    issue = only(check(model, dla=True), "dla-dynamic-shape")[0]
    assert issue.severity == "error" and issue.node == "x"


def test_dla_on_a_target_without_dla_and_in_fp32():
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="relu0")], [image()], [image("y")])
    assert only(check(model, target=get_target("jetson-orin-nano"), dla=True), "dla-unavailable")
    assert only(check(model, dla=True, precision="fp32"), "dla-precision")


def test_dla_reports_layers_falling_back_to_the_gpu():
    w = numpy_helper.from_array(np.zeros((32, 32), np.float32), "w")
    idx = numpy_helper.from_array(np.array([0, 2], np.int64), "idx")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"), helper.make_node("Gather", ["m", "idx"], ["y"],
                                                                                        name="g", axis=3)]
    model = graph_model(nodes, [image()], [image("y", (1, 3, 32, 2))], [w, idx])
    issue = only(check(model, dla=True), "dla-gpu-fallback")[0]
    assert issue.severity == "info" and "mm" in issue.message and "g" in issue.message


def test_qdq_rules():
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    good_zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    bad_zp = numpy_helper.from_array(np.array(3, np.int8), "zp_bad")
    u8_zp = numpy_helper.from_array(np.array(128, np.uint8), "zp_u8")

    def qdq(zp):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", zp], ["q"], name="quant"),
                 helper.make_node("DequantizeLinear", ["q", "s", zp], ["y"], name="dequant")]
        return graph_model(nodes, [image()], [image("y")], [scale, good_zp, bad_zp, u8_zp])

    assert check(qdq("zp"), precision="int8").find("qdq") == []
    assert {i.node for i in only(check(qdq("zp_bad"), precision="int8"), "qdq")} == {"quant", "dequant"}
    assert "INT8" in only(check(qdq("zp_u8"), precision="int8"), "qdq")[0].message
    assert only(check(qdq("zp"), precision="fp16"), "qdq")[0].severity == "error"


def test_uint8_inside_the_network_but_not_at_the_output():
    to_u8 = helper.make_node("Cast", ["x"], ["u"], name="to_u8", to=TensorProto.UINT8)
    back = helper.make_node("Cast", ["u"], ["y"], name="back", to=TensorProto.FLOAT)
    model = graph_model([to_u8, back], [image()], [image("y")])
    assert only(check(model), "uint8-tensor")[0].node == "to_u8"
    at_output = graph_model([to_u8], [image()], [image("u", dtype=TensorProto.UINT8)])
    assert at_output.graph.output[0].name == "u" and check(at_output).find("uint8-tensor") == []


def test_custom_op_without_function_needs_a_plugin():
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="acme")
    model = graph_model([node], [image()], [image("y")], extra_opsets=[("acme", 1)])
    issue = only(check(model, version="10.16"), "plugin-required")[0]
    assert issue.node == "fancy" and "'acme'" in issue.message  # namespace read from the domain since 10.10
    assert "''" in only(check(model, version="10.3"), "plugin-required")[0].message


def test_ort_contrib_op_is_unsupported():
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], name="fused", domain="com.microsoft")
    model = graph_model([node], [image()], [image("y")], extra_opsets=[("com.microsoft", 1)])
    assert only(check(model), "unsupported-op")[0].node == "fused"


def _function_model(body_op: str):
    """A segrt-domain local function (like the token-merging ops), called from the main graph."""
    body = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node(body_op, ["r"], ["b"], name="inner")]
    fn = helper.make_function("segrt", "TokenMerge", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    call = helper.make_node("TokenMerge", ["x"], ["y"], name="merge_block1", domain="segrt")
    return graph_model([call], [image()], [image("y")], functions=[fn], extra_opsets=[("segrt", 1)])


def test_local_functions_are_checked_through_their_bodies():
    ok = check(_function_model("Sigmoid"))
    assert ok.clean and only(ok, "local-function")[0].severity == "info"
    issue = only(check(_function_model("Hardmax_not_an_op")), "unsupported-op")[0]
    assert issue.node == "merge_block1/inner"


def test_layernorm_extra_outputs_and_opset_range():
    scale = numpy_helper.from_array(np.ones(32, np.float32), "g")
    ln = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln", axis=-1)
    model = graph_model([ln], [image()], [image("y"), image("mean", (1, 3, 32, 1))], [scale])
    assert only(check(model), "layernorm")[0].node == "ln"
    relu = graph_model([helper.make_node("Relu", ["x"], ["y"])], [image()], [image("y")], opset=22)
    assert only(check(relu, version="10.3"), "opset")[0].severity == "warning"
    assert check(relu, version="10.16").find("opset") == []


def test_fp16_range_of_weights():
    w = numpy_helper.from_array(np.array([1e6], np.float32), "huge")
    model = graph_model([helper.make_node("Mul", ["x", "huge"], ["y"], name="scale")], [image()], [image("y")], [w])
    assert only(check(model, precision="fp16"), "fp16-range")[0].node == "scale"
    assert check(model, precision="fp32").find("fp16-range") == []


def test_report_serialises_with_node_names():
    report = check(_topk(5000))
    data = report.to_dict()
    assert data["ok"] is False and data["issues"][0]["node"] == "topk_node"
    assert "topk_node" in report.to_text()


def test_exported_segformer_is_clean_for_every_target_version(b0_onnx):
    model = onnx.load(str(b0_onnx))
    for target, version in [("jetson-orin", "10.3"), ("jetson-orin-jp7", "10.16"), ("jetson-thor", "11.4"),
                            ("desktop", "10.8")]:
        report = check_model(model, get_target(target), version, "fp16")
        assert report.clean, report.to_text()
