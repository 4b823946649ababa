"""INT8 Q/DQ quantization: symmetric int8 with zero points 0, float LayerNorm/Softmax, real-image agreement."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from segrt.export.passes.cpu_form import is_cpu_form
from segrt.export.passes.quantize import (
    attention_matmuls,
    calibration_images,
    census,
    label_agreement,
    output_heads,
    quantize_int8,
    read_metadata,
    upsampled_convs,
)
from segrt.runtime.errors import ConfigError, DatasetError
from segrt.runtime.metadata import ModelMetadata


@pytest.fixture(scope="module")
def int8_model(b0_onnx, camvid_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "b0_int8.onnx"
    result = quantize_int8(b0_onnx, out, camvid_root / "train", 8, show_progress=False)
    return result, onnx.load(str(out))


def _initializers(proto):
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


def test_every_zero_point_is_int8_zero_and_scales_positive(int8_model):
    _, proto = int8_model
    inits = _initializers(proto)
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes: nothing was quantized"
    for node in qdq:
        scale = inits[node.input[1]]
        assert np.all(scale > 0), node.name
        assert len(node.input) == 3, f"{node.name} has no explicit zero point"
        zero = inits[node.input[2]]
        # int8 only: int32 (bias) DequantizeLinear is what TensorRT's parser rejects
        assert zero.dtype == np.int8, f"{node.name}: zero point type {zero.dtype}"
        assert not zero.any(), f"{node.name}: non-zero zero point"


def test_weights_are_int8_per_output_channel(int8_model):
    _, proto = int8_model
    inits = _initializers(proto)
    dq_of = {n.output[0]: n for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    heads = set(output_heads(proto)) | set(upsampled_convs(proto))
    convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name not in heads]
    assert convs
    for conv in convs:
        dq = dq_of[conv.input[1]]
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[0],), f"{conv.name}: per-tensor weight scale"


def test_layernorm_softmax_and_attention_stay_float(int8_model, b0_onnx):
    _, proto = int8_model
    # the Q/DQ file is for TensorRT: the export's ONNX Runtime CPU LayerNorms are LayerNormalization again
    assert is_cpu_form(onnx.load(str(b0_onnx))) and not is_cpu_form(proto)
    assert "ops" not in ModelMetadata.from_onnx(proto).extra
    inits = _initializers(proto)
    kept = [n for n in proto.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept
    for node in kept:
        for name in node.input[1:]:  # LayerNorm scale and bias: float tensors, not dequantized int8
            assert inits[name].dtype == np.float32, f"{node.name}: parameter {name} is {inits[name].dtype}"
    consumers = {i for n in proto.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
    producers = {o: n for n in proto.graph.node for o in n.output}
    quantized, floating = census(proto)
    source = onnx.load(str(b0_onnx))
    attention, heads = attention_matmuls(source), output_heads(source)
    assert len(heads) == 1  # the classifier
    heads += upsampled_convs(source)
    assert len(heads) == 4  # + the folded decoder's projections of stages 2-4, upsampled in float NCHWc
    kept_float = {n.op_type: 0 for n in source.graph.node if n.name in attention + heads}
    for n in source.graph.node:
        if n.name in attention + heads:
            kept_float[n.op_type] += 1
    assert floating == kept_float  # exactly the activation x activation MatMuls and the classifier
    assert quantized.get("Conv") == sum(n.op_type == "Conv" for n in source.graph.node) - kept_float.get("Conv", 0)
    # a Softmax output may be quantized only for a consumer; the Softmax itself reads float input
    for node in proto.graph.node:
        if node.op_type == "Softmax":
            assert producers[node.input[0]].op_type != "DequantizeLinear"
    assert consumers  # sanity: the graph does quantize activations somewhere


def test_metadata_is_carried_over(int8_model, b0_onnx):
    result, proto = int8_model
    before = read_metadata(onnx.load(str(b0_onnx)), b0_onnx)
    after = read_metadata(proto, result.path)
    assert after.classes == before.classes
    assert after.input_size == before.input_size
    assert (after.mean, after.std) == (before.mean, before.std)
    assert after.extra["precision"] == "int8"
    assert "8 images" in after.extra["calibration"]


def test_int8_agrees_with_fp32_on_unseen_real_images(int8_model, b0_onnx, camvid_root):
    result, _ = int8_model
    val = sorted((camvid_root / "val").glob("*.png"))[::20]
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in val]
    agreement = label_agreement(b0_onnx, result.path, frames)
    # A random-weight model has flat logits, where int8 rounding flips argmaxes more easily than in a
    # trained one; 90% per image is still far above chance (1/11) and catches a broken scale or axis.
    assert min(agreement) > 0.90, agreement


def test_calibration_images_spread_over_the_folder(camvid_root):
    all_train = sorted((camvid_root / "train").glob("*.png"))
    picks = calibration_images(camvid_root, 5)  # a dataset root resolves to its train/ folder
    assert len(picks) == 5 and picks[0] == all_train[0] and picks[-1] == all_train[-1]
    assert picks == sorted(picks) and len(set(picks)) == 5
    assert calibration_images(camvid_root / "train", 10_000) == all_train


def test_bad_calibration_inputs_are_named(tmp_path, b0_onnx):
    with pytest.raises(DatasetError, match="no images"):
        calibration_images(tmp_path, 4)
    with pytest.raises(ConfigError, match="calibration method"):
        quantize_int8(b0_onnx, tmp_path / "x.onnx", tmp_path, 4, method="magic")


def test_export_cli_checks_precision_before_loading(tmp_path):
    from typer.testing import CliRunner

    from segrt.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", "no-such-model", "-o", str(tmp_path / "m.onnx"), "--precision", "int8"])
    assert isinstance(res.exception, ConfigError) and "--calib" in str(res.exception)
    res = runner.invoke(app, ["export", "no-such-model", "-o", str(tmp_path / "m.onnx"), "--precision", "int4"])
    assert isinstance(res.exception, ConfigError) and "int4" in str(res.exception)


def test_onnxruntime_runs_every_quantized_op_on_integer_kernels(int8_model, tmp_path):
    """The graph is shaped so ONNX Runtime's CPU provider fuses all Q/DQ Conv and weight MatMuls into
    QLinearConv / QLinearMatMul (u8 x s8 kernels); a regression here silently costs the INT8 speed-up."""
    import onnxruntime as ort

    result, proto = int8_model
    quantized, floating = census(proto)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(result.path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == quantized["Conv"]
    assert ops.count("QLinearMatMul") == quantized["MatMul"]
    assert ops.count("Conv") == floating.get("Conv", 0)  # only the float classifier


def test_each_activation_pair_has_one_consumer(int8_model):
    _, proto = int8_model
    constants = {i.name for i in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in constants:
            assert users.get(node.output[0], 0) == 1, f"{node.name} feeds {users.get(node.output[0], 0)} nodes"


def test_profiler_reports_the_integer_kernels(int8_model, camvid_frame):
    from segrt.measure.profile import profile_kernels
    from segrt.runtime.preprocess import frames_to_input

    result, proto = int8_model
    meta = read_metadata(proto, result.path)
    prof = profile_kernels(result.path, frames_to_input([camvid_frame], meta.input_size, meta.mean, meta.std), runs=2)
    assert {"QLinearConv", "QLinearMatMul"} <= set(prof.integer_kernels())
    by_type = {o.op_type: o for o in prof.op_types}
    assert by_type["QLinearConv"].input_types == ["uint8"]  # signed Q/DQ runs on the unsigned (AMX/VNNI) path
    assert prof.total_ms_per_run == pytest.approx(sum(o.ms_per_run for o in prof.op_types))
