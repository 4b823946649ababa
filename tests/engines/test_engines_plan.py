"""Build plans per TensorRT version, computed without TensorRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.engines.model_info import describe
from segrt.engines.plan import FP32_LAYER_TYPES, BuildRequest, PlanFile, make_plan, plan_versions
from segrt.engines.targets import get_target
from segrt.engines.versions import TrtVersion
from segrt.runtime.errors import ConfigError
from segrt.runtime.metadata import METADATA_KEY, ModelMetadata


def tiny_model(dynamic=False, qdq=False, fp16=False):
    """A conv net with segrt metadata; optionally dynamic, Q/DQ-quantized or with FP16 weights."""
    shape = ["N", 3, "H", "W"] if dynamic else [1, 3, 64, 64]
    out_shape = ["N", 4, "H", "W"] if dynamic else [1, 4, 64, 64]
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float16 if fp16 else np.float32), "w")
    inits, nodes, x = [w], [], "x"
    if fp16:
        nodes.append(helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0,
                                                                                                             np.int8),
                                                                                                             "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"])]
        x = "dq"
    nodes.append(helper.make_node("Conv", [x, "w"], ["y16" if fp16 else "y"], name="conv"))
    if fp16:
        nodes.append(helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMetadata(classes=["a", "b", "c", "d"], input_size=None if dynamic else (64, 64))
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    return describe(model, Path("tiny.onnx"), sha256="0" * 64)


ORIN, JP7, THOR, DESKTOP = (get_target(n) for n in ("jetson-orin", "jetson-orin-jp7", "jetson-thor", "desktop"))


@pytest.mark.parametrize("version", ["10.3", "10.16"])
def test_tensorrt_10_fp16_is_the_builder_flag_on_the_fp32_onnx(version):
    plan = make_plan(ORIN, tiny_model(), version, BuildRequest("jetson-orin", precision="fp16"))
    assert not plan.strongly_typed
    assert "FP16" in plan.builder_flags and "PREFER_PRECISION_CONSTRAINTS" in plan.builder_flags
    assert plan.onnx == "model.onnx" and plan.onnx_variant == "fp32"
    assert plan.fp32_layer_types == list(FP32_LAYER_TYPES)


@pytest.mark.parametrize(("target", "version"), [(DESKTOP, "11.0"), (JP7, "11.4.1")])
def test_tensorrt_11_fp16_is_a_strongly_typed_fp16_onnx(target, version):
    plan = make_plan(target, tiny_model(), version, BuildRequest(target.name, precision="fp16"))
    assert plan.strongly_typed
    assert not {"FP16", "INT8"} & set(plan.builder_flags)  # the flags no longer exist in 11
    assert plan.onnx == "model.fp16.onnx" and plan.onnx_variant == "fp16"
    assert plan.fp32_layer_types == []  # the FP16 ONNX already keeps them in FP32


def test_fp32_plans():
    p10 = make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", precision="fp32"))
    p11 = make_plan(JP7, tiny_model(), "11.4.1", BuildRequest("jetson-orin-jp7", precision="fp32"))
    assert p10.builder_flags == [] and not p10.strongly_typed
    assert p11.strongly_typed and p11.onnx_variant == "fp32"


def test_int8_needs_qdq_and_is_explicit():
    with pytest.raises(ConfigError, match="segrt export MODEL --precision int8"):
        make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", precision="int8"))
    p10 = make_plan(ORIN, tiny_model(qdq=True), "10.3", BuildRequest("jetson-orin"))
    assert p10.precision == "int8" and {"INT8", "FP16"} <= set(p10.builder_flags) and p10.onnx_variant == "qdq"
    p11 = make_plan(JP7, tiny_model(qdq=True), "11.4.1", BuildRequest("jetson-orin-jp7", precision="int8"))
    assert p11.strongly_typed and "INT8" not in p11.builder_flags and p11.onnx == "model.onnx"
    assert any("AutoCast" in n for n in p11.notes)  # unquantized layers stay FP32 in TensorRT 11
    with pytest.raises(ConfigError, match="quantized"):
        make_plan(ORIN, tiny_model(qdq=True), "10.3", BuildRequest("jetson-orin", precision="fp16"))


def test_an_fp16_onnx_is_strongly_typed_even_on_tensorrt_10():
    plan = make_plan(ORIN, tiny_model(fp16=True), "10.3", BuildRequest("jetson-orin"))
    assert plan.precision == "fp16" and plan.strongly_typed and "FP16" not in plan.builder_flags
    with pytest.raises(ConfigError):
        make_plan(ORIN, tiny_model(fp16=True), "10.3", BuildRequest("jetson-orin", precision="fp32"))


def test_dynamic_inputs_become_an_optimization_profile():
    plan = make_plan(ORIN, tiny_model(dynamic=True), "10.3", BuildRequest("jetson-orin", max_batch=4))
    (p,) = plan.profiles
    # sized for 4 cameras: batch 1..4, tuned for 4
    assert p.input == "x" and p.min == [1, 3, 256, 256] and p.opt == [4, 3, 512, 512] and p.max == [4, 3, 1024, 1024]
    custom = make_plan(ORIN, tiny_model(dynamic=True), "10.3",
                       BuildRequest("jetson-orin", shapes={"x": ([1, 3, 128, 128], [1, 3, 360, 480], [2, 3, 720,
                                                                                                      960])}))
    assert custom.profiles[0].opt == [1, 3, 360, 480]
    assert make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin")).profiles == []
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        make_plan(ORIN, tiny_model(dynamic=True), "10.3",
                  BuildRequest("jetson-orin", shapes={"x": ([1, 3, 512, 512], [1, 3, 256, 256], [1, 3, 512, 512])}))
    with pytest.raises(ConfigError, match="fixed"):
        make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", shapes={"x": ([1, 3, 32, 32], [1, 3, 64, 64],
                                                                                        [1, 3, 64, 64])}))


def test_dla_rules():
    plan = make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", dla_core=1))
    assert plan.dla_core == 1 and "GPU_FALLBACK" in plan.builder_flags
    for target, request, match in [
        (get_target("jetson-orin-nano"), BuildRequest("jetson-orin-nano", dla_core=0), "no DLA"),
        (ORIN, BuildRequest("jetson-orin", dla_core=2), "cores 0..1"),
        (ORIN, BuildRequest("jetson-orin", dla_core=0, precision="fp32"), "FP16 or INT8"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make_plan(target, tiny_model(), "10.3", request)
    with pytest.raises(ConfigError, match="dynamic shapes"):
        make_plan(ORIN, tiny_model(dynamic=True), "10.3", BuildRequest("jetson-orin", dla_core=0))


def test_hardware_and_version_compatibility():
    amp = make_plan(get_target("desktop-ampere-plus"), tiny_model(), "10.8", BuildRequest("desktop-ampere-plus"))
    assert amp.hardware_compatibility == "ampere_plus" and "NATIVE_INSTANCENORM" in amp.parser_flags
    assert amp.compute_capability is None
    vc = make_plan(DESKTOP, tiny_model(), "10.8", BuildRequest("desktop", version_compatible=True))
    assert "VERSION_COMPATIBLE" in vc.builder_flags and "NATIVE_INSTANCENORM" in vc.parser_flags
    with pytest.raises(ConfigError, match="Jetson"):
        make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", version_compatible=True))
    plain = make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin"))
    assert plain.compute_capability == [8, 7] and plain.parser_flags == []


def test_plan_versions_one_per_major():
    assert plan_versions(ORIN, BuildRequest("jetson-orin")) == [TrtVersion(10, 3)]
    # TensorRT 11.0-11.4.0 do not support JetPack: a Jetson target's "11" plans for 11.4.1.
    assert plan_versions(JP7, BuildRequest("jetson-orin-jp7")) == [TrtVersion(10, 16), TrtVersion(11, 4, 1)]
    assert plan_versions(DESKTOP, BuildRequest("desktop")) == [TrtVersion(10), TrtVersion(11)]
    assert plan_versions(THOR, BuildRequest("jetson-thor", tensorrt="11.4.1")) == [TrtVersion(11, 4, 1)]


@pytest.mark.parametrize("version", ["11.0", "11.4"])
def test_tensorrt_11_before_11_4_1_is_refused_for_jetson(version):
    with pytest.raises(ConfigError, match="does not support JetPack"):
        make_plan(THOR, tiny_model(), version, BuildRequest("jetson-thor", precision="fp16"))


def test_plan_file_round_trip_and_version_choice(tmp_path):
    info = tiny_model()
    request = BuildRequest("jetson-orin-jp7", precision="fp16")
    plans = [make_plan(JP7, info, v, request) for v in plan_versions(JP7, request)]
    PlanFile(request, plans, {"source": "tiny.onnx"}).save(tmp_path / "plan.json")
    loaded = PlanFile.load(tmp_path / "plan.json")
    assert loaded.plans == plans and loaded.request == request
    assert loaded.for_version(TrtVersion(10, 16, 1)).tensorrt == "10.16"
    assert loaded.for_version(TrtVersion(11, 4, 1)).strongly_typed
    with pytest.raises(ConfigError, match="--tensorrt 12.0"):
        loaded.for_version(TrtVersion(12, 0))


def test_other_requests_are_validated():
    with pytest.raises(ConfigError, match="precision"):
        make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", precision="bf16"))
    with pytest.raises(ConfigError, match="optimization level"):
        make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", optimization_level=9))
    assert make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin", workspace_mb=300)).workspace_mb == 300
    assert make_plan(ORIN, tiny_model(), "10.3", BuildRequest("jetson-orin")).workspace_mb == ORIN.workspace_mb
