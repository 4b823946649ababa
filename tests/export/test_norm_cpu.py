"""Narrow LayerNorms as InstanceNormalization for ONNX Runtime's CPU provider, and back for TensorRT."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segrt.export.passes.norm_cpu import PREFIX, has_instance_norms, to_instance_norm, to_layer_norm
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def tiny(tiny_onnx):
    return onnx.load(str(tiny_onnx))


@pytest.fixture(scope="module")
def tiny_input(tiny, camvid_frame):
    meta = ModelMetadata.from_onnx(tiny)
    return frames_to_input([camvid_frame], meta.input_size, meta.mean, meta.std)


@pytest.fixture(scope="module")
def tiny_affine(tiny):
    """The tiny model with random LayerNorm scales and biases (its own are 1 and 0, which would hide a wrong fold)."""
    model = onnx.ModelProto.FromString(tiny.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(5)
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            for name, values in ((node.input[1], lambda n: rng.uniform(0.3, 2.0, n)),
                                 (node.input[2], lambda n: rng.normal(0.0, 0.5, n))):
                shape = tuple(inits[name].dims)
                inits[name].CopyFrom(onnx.numpy_helper.from_array(values(shape).astype(np.float32), name))
    return model


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_narrow_layernorms_become_instance_norms_that_compute_the_same(tiny, tiny_input, tiny_onnx):
    rewritten, count = to_instance_norm(tiny)
    layer_norms = sum(n.op_type == "LayerNormalization" for n in tiny.graph.node)
    ops = Counter(n.op_type for n in rewritten.graph.node)
    assert count == layer_norms == ops["InstanceNormalization"] and "LayerNormalization" not in ops
    onnx.checker.check_model(rewritten, full_check=True)
    expected = run(tiny, tiny_input)
    actual = run(rewritten, tiny_input)
    assert relative(actual, expected) < 1e-5
    assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.9999
    assert tiny.SerializeToString() == onnx.load(str(tiny_onnx)).SerializeToString()  # the input is left alone


def test_scale_and_bias_fold_where_exact_and_stay_where_padding_would_see_them(tiny):
    rewritten, _ = to_instance_norm(tiny)
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in rewritten.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = kept = 0
    for node in rewritten.graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        users = consumers[node.output[0]]
        if [u.op_type for u in users] == ["Mul"]:  # scale and bias kept: one of the users is not foldable
            kept += 1
            after = consumers[consumers[users[0].output[0]][0].output[0]]
            reach = {u.op_type for u in after}
            # a residual Add or a padded convolution behind the layout ops
            assert "Add" in reach or "Transpose" in reach
        else:
            folded += 1
            assert {u.op_type for u in users} <= {"MatMul", "Transpose"}
        assert producers.get(node.input[1]) is None  # static length: constant unit scale
    assert folded and kept  # the tiny model has both kinds (patch-embedding norms feed the residual stream)


def test_to_layer_norm_restores_layernorms_for_tensorrt(tiny, tiny_input):
    rewritten, count = to_instance_norm(tiny)
    back, restored = to_layer_norm(rewritten)
    assert restored == count and not has_instance_norms(back)
    ops = Counter(n.op_type for n in back.graph.node)
    assert ops["LayerNormalization"] == count and "InstanceNormalization" not in ops
    onnx.checker.check_model(back, full_check=True)
    assert relative(run(back, tiny_input), run(tiny, tiny_input)) < 1e-5
    assert to_layer_norm(tiny)[1] == 0  # nothing to undo in a file that never had them


def layer_norm_then_linear(tokens: int | str, channels: int = 32, out: int = 8) -> onnx.ModelProto:
    """LayerNorm -> Linear (MatMul + bias Add) over ``tokens`` tokens, as the dynamo exporter writes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.random(channels) + 0.5).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal((channels, out)).astype(np.float32), "weight"),
             numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "bias")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "weight"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "bias"], ["y"], name="add")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, channels])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, out])
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_sequence_length_known_only_at_run_time():
    """Dynamic sizes: the unit scale and zero bias are made at run time from the tensor's shape."""
    model = layer_norm_then_linear("tokens")
    rewritten, count = to_instance_norm(model)
    assert count == 1
    made = Counter(n.op_type for n in rewritten.graph.node if n.name.startswith(PREFIX))
    assert made["ConstantOfShape"] == 2 and made["Shape"] == 1 and "Mul" not in made  # scale and bias folded
    back, _ = to_layer_norm(rewritten)
    assert not any(n.name.startswith(PREFIX) and n.op_type in ("Shape", "ConstantOfShape") for n in back.graph.node)
    for tokens in (7, 300):
        x = np.random.default_rng(tokens).standard_normal((1, tokens, 32)).astype(np.float32) * 3 + 1
        expected = run(model, x)
        assert relative(run(rewritten, x), expected) < 1e-5
        assert relative(run(back, x), expected) < 1e-5


def test_a_linear_without_bias_gets_the_moved_bias():
    model = layer_norm_then_linear(16)
    del model.graph.node[2]  # no bias Add: the MatMul's output is the graph's
    model.graph.output[0].name = "m"
    rewritten, _ = to_instance_norm(model)
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.random.default_rng(1).standard_normal((1, 16, 32)).astype(np.float32)
    assert relative(run(rewritten, x), run(model, x)) < 1e-5


def test_wide_layernorms_are_left_alone(tiny):
    widths = sorted({int(onnx.numpy_helper.to_array(i).shape[0]) for n in tiny.graph.node
                     if n.op_type == "LayerNormalization" for i in tiny.graph.initializer if i.name == n.input[1]})
    _, count = to_instance_norm(tiny, max_channels=widths[0] - 1)
    assert count == 0
    _, count = to_instance_norm(tiny, max_channels=widths[0])
    assert 0 < count < sum(n.op_type == "LayerNormalization" for n in tiny.graph.node) or len(widths) == 1


def test_export_writes_the_cpu_norms_by_default_and_records_them(b0_onnx):
    model = onnx.load(str(b0_onnx))
    assert has_instance_norms(model)
    assert ModelMetadata.from_onnx(model).extra["ops"] == "onnxruntime-cpu"
    assert any(n.op_type == "LayerNormalization" for n in model.graph.node)  # B0's wide stages stay native


def test_cpu_form_round_trip_tags_the_metadata(tiny, tiny_input):
    from segrt.export.passes.cpu_form import CPU_TAG, is_cpu_form, to_cpu_ops, to_portable_ops

    cpu, changes = to_cpu_ops(tiny)
    assert changes and is_cpu_form(cpu) and ModelMetadata.from_onnx(cpu).extra["ops"] == CPU_TAG
    portable = to_portable_ops(cpu)
    assert not is_cpu_form(portable) and "ops" not in ModelMetadata.from_onnx(portable).extra
    assert relative(run(portable, tiny_input), run(tiny, tiny_input)) < 1e-5
    assert to_portable_ops(tiny) is tiny  # nothing to undo: the same object, untouched


def test_folds_are_exact_with_real_scales_and_biases(tiny_affine, tiny_input):
    """Folded into MatMuls and the sequence-reduction convolutions, kept as Mul/Add elsewhere; and back."""
    rewritten, count = to_instance_norm(tiny_affine)
    expected = run(tiny_affine, tiny_input)
    assert count and relative(run(rewritten, tiny_input), expected) < 1e-5
    back, restored = to_layer_norm(rewritten)
    assert restored == count and relative(run(back, tiny_input), expected) < 1e-5
    # where scale and bias were kept as a Mul and an Add, they are the LayerNorm's own again
    assert not any(n.name.startswith(PREFIX) and n.op_type in ("Mul", "Add") for n in back.graph.node)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in back.graph.initializer}
    scales = [inits[n.input[1]] for n in back.graph.node if n.op_type == "LayerNormalization"]
    assert any(not np.allclose(s, 1.0) for s in scales) and any(np.allclose(s, 1.0) for s in scales)
