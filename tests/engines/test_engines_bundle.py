"""`segrt build` off the device: the bundle (prepared ONNX, plan, report, scripts) for a real export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from segrt.engines.bundle import fp32_layer_names, trtexec_command, verify_bundle_file, write_bundle
from segrt.engines.plan import BuildRequest, PlanFile
from segrt.engines.targets import get_target
from segrt.engines.versions import TrtVersion
from segrt.export.passes.cpu_form import is_cpu_form, to_portable_ops
from segrt.runtime.errors import BackendUnavailableError, ConfigError


@pytest.fixture(scope="module")
def orin_bundle(b0_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("orin-bundle")
    return write_bundle(b0_onnx, out, get_target("jetson-orin"), BuildRequest("jetson-orin", precision="fp16"))


def test_orin_bundle_is_complete_and_clean(orin_bundle, b0_onnx):
    out = orin_bundle.directory
    names = {p.name for p in out.iterdir()}
    assert {"b0.onnx", "plan.json", "compatibility.txt", "compatibility.json", "build_engine.sh",
            "build_engine_trtexec.sh"} <= names
    assert "b0.fp16.onnx" not in names  # TensorRT 10.3 builds FP16 from the FP32 ONNX with the FP16 flag
    assert orin_bundle.clean, "".join(r.to_text() for r in orin_bundle.reports)
    # the export's CPU ops (InstanceNormalization LayerNorms) are portable again, nothing else changed
    written, source = onnx.load(str(out / "b0.onnx")), onnx.load(str(b0_onnx))
    assert is_cpu_form(source) and not is_cpu_form(written)
    assert written.SerializeToString() == to_portable_ops(source).SerializeToString()
    assert orin_bundle.plan_file.model["wrapped_from"]["source"] == "b0.onnx"

    plan_file = PlanFile.load(out / "plan.json")
    (plan,) = plan_file.plans
    assert plan.tensorrt == "10.3" and "FP16" in plan.builder_flags and plan.engine == "b0.jetson-orin.fp16.engine"
    assert plan_file.model["inputs"][0]["shape"] == [1, 3, 256, 320]
    report = json.loads((out / "compatibility.json").read_text())
    assert report[0]["clean"] and report[0]["target"] == "jetson-orin"

    script = (out / "build_engine.sh").read_text()
    assert "segrt build --from-plan plan.json" in script and (out / "build_engine.sh").stat().st_mode & 0o111
    trtexec = (out / "build_engine_trtexec.sh").read_text()
    names, _ = fp32_layer_names(onnx.load(str(out / "b0.onnx")), plan.fp32_layer_types)
    assert trtexec_command(plan, names).removeprefix("trtexec ") in trtexec
    assert "--adopt b0.jetson-orin.fp16.engine" in trtexec


def test_trtexec_pins_the_same_layers_to_fp32(orin_bundle):
    """Issue 17 defect 9: the trtexec script dropped the FP32 pins of a TensorRT 10 FP16 build."""
    out = orin_bundle.directory
    plan = orin_bundle.plan_file.plans[0]
    model = onnx.load(str(out / "b0.onnx"))
    names, unpinned = fp32_layer_names(model, plan.fp32_layer_types)
    pinned_ops = {n.op_type for n in model.graph.node if n.name in names}
    assert {"LayerNormalization", "Softmax"} <= pinned_ops and unpinned == 0
    script = (out / "build_engine_trtexec.sh").read_text()
    assert "--precisionConstraints=prefer" in script
    assert all(f"{name}:fp32" in script for name in names)
    fp32_plan = type(plan)(**{**plan.__dict__, "fp32_layer_types": [], "builder_flags": []})
    assert "--layerPrecisions" not in trtexec_command(fp32_plan, names)  # FP32 builds need no pins


def test_trtexec_lines_follow_the_plan(orin_bundle):
    plan = orin_bundle.plan_file.plans[0]
    line = trtexec_command(plan)
    assert "--onnx=b0.onnx" in line and "--fp16" in line and "--stronglyTyped" not in line
    assert "--memPoolSize=workspace:2048M" in line and "--timingCacheFile=timing.cache" in line
    dla = trtexec_command(type(plan)(**{**plan.__dict__, "dla_core": 1}))
    assert "--useDLACore=1" in dla and "--allowGPUFallback" in dla


def test_bundle_files_are_hash_checked(orin_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(orin_bundle.directory, copy)
    plan_file = PlanFile.load(copy / "plan.json")
    assert verify_bundle_file(copy, "b0.onnx", plan_file).is_file()
    with open(copy / "b0.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ConfigError, match="changed after the bundle was written"):
        verify_bundle_file(copy, "b0.onnx", plan_file)


def test_jp7_bundle_plans_both_tensorrt_majors(b0_onnx, camvid_frame, tmp_path):
    bundle = write_bundle(b0_onnx, tmp_path, get_target("jetson-orin-jp7"), BuildRequest("jetson-orin-jp7"),
                          frames=[camvid_frame])
    p10 = bundle.plan_file.for_version(TrtVersion(10, 16, 1))
    p11 = bundle.plan_file.for_version(TrtVersion(11, 4, 1))
    assert not p10.strongly_typed and p10.onnx == "b0.onnx"
    assert p11.strongly_typed and p11.onnx == "b0.fp16.onnx" and (tmp_path / "b0.fp16.onnx").is_file()
    assert [r.model for r in bundle.reports] == ["b0.onnx", "b0.fp16.onnx"] and bundle.clean
    err, agreement = bundle.fp16_error
    assert err < 0.05 and agreement > 0.99
    trtexec = (tmp_path / "build_engine_trtexec.sh").read_text()
    assert "10)" in trtexec and "11)" in trtexec and "--stronglyTyped" in trtexec

    # An FP16 ONNX given directly (e.g. from `segrt export --precision fp16`) is built strongly typed as is.
    again = write_bundle(tmp_path / "b0.fp16.onnx", tmp_path / "from-fp16", get_target("jetson-orin"),
                         BuildRequest("jetson-orin"))
    (plan,) = again.plan_file.plans
    assert plan.strongly_typed and plan.precision == "fp16" and plan.onnx == "b0.fp16.onnx"
    assert (tmp_path / "from-fp16" / "b0.fp16.onnx").is_file() and not (tmp_path / "from-fp16" / "b0.onnx").exists()
    assert again.fp16_error is None and again.clean


def _broken_model(path):
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["pixel_values", "", "scales"], ["output"], name="cubic_upsample", mode="cubic")
    graph = helper.make_graph([node], "broken",
                              [helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
                              [scales])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_cli_build_writes_a_bundle_and_refuses_broken_graphs(b0_onnx, tmp_path):
    from segrt.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["build", str(b0_onnx), "--target", "jetson-orin", "--precision", "fp16",
                                 "-o", str(tmp_path / "ok"), "--no-engine"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "clean" in result.output and (tmp_path / "ok" / "plan.json").is_file()

    broken = _broken_model(tmp_path / "broken.onnx")
    # A foreign ONNX (no segrt metadata: no normalisation to put in the graph) has no frame form.
    result = runner.invoke(app, ["build", str(broken), "--target", "jetson-orin", "-o", str(tmp_path / "bad")],
                           env={"COLUMNS": "200"})
    assert isinstance(result.exception, ConfigError) and "--form logits" in str(result.exception)
    result = runner.invoke(app, ["build", str(broken), "--target", "jetson-orin", "--form", "logits",
                                 "-o", str(tmp_path / "bad")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "cubic_upsample" in result.output and "[resize]" in result.output
    assert "cubic_upsample" in (tmp_path / "bad" / "compatibility.txt").read_text()

    result = runner.invoke(app, ["build", str(broken), "--target", "jetson-orin", "--form", "logits", "--check-only"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "FAILS" in result.output


def test_from_plan_needs_tensorrt_on_the_device(orin_bundle):
    from segrt.cli import app
    from segrt.engines.versions import detect_tensorrt

    if detect_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    result = CliRunner().invoke(app, ["build", "--from-plan", str(orin_bundle.directory / "plan.json")])
    assert isinstance(result.exception, BackendUnavailableError)
