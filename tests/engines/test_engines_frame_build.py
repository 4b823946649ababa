"""`segrt build` of the frame form (issue 18): the bundle wraps the export (uint8 frame in, mask out, post "dense"),
plans profiles over camera sizes and camera counts, and records form, frame size and batch in plan and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from segrt.commands.build import _shape
from segrt.engines.bundle import write_bundle
from segrt.engines.model_info import describe
from segrt.engines.plan import BuildRequest, PlanFile, make_plan
from segrt.engines.targets import get_target
from segrt.export.passes.frame_graph import to_frame_form
from segrt.runtime.engine import Engine
from segrt.runtime.errors import ConfigError
from segrt.runtime.metadata import METADATA_KEY, ModelMetadata

DESKTOP = get_target("desktop")


def logits_model(batch: int | str = "N", hw: tuple | None = None) -> onnx.ModelProto:
    """A 1x1-conv "network" with segrt metadata, logits at 1/4 resolution: dynamic batch and size by default."""
    h, w = hw or ("H", "W")
    out_hw = (h // 4, w // 4) if hw else ("h", "w")
    inits = [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[4, 4])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, *out_hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    meta = ModelMetadata(classes=["a", "b", "c", "d"], input_size=hw)
    model.metadata_props.add(key=METADATA_KEY, value=meta.to_json())
    return model


def frame_info(frame_size=None, batch: int | str = "N"):
    model = to_frame_form(logits_model(batch, (64, 64)), frame_size=frame_size, post="dense")
    return describe(model, Path("net.onnx"), sha256="0" * 64)


def test_frame_form_profiles_cover_camera_sizes_and_counts():
    one = make_plan(DESKTOP, frame_info(), "10.3", BuildRequest("desktop"))
    (p,) = one.profiles
    assert p.input == "frame" and p.min == [1, 240, 320, 3] and p.opt == [1, 720, 1280, 3]
    assert p.max == [1, 1080, 1920, 3]
    assert one.form == "frame" and one.frame_size is None and one.max_batch == 1

    four = make_plan(DESKTOP, frame_info(), "10.3", BuildRequest("desktop", max_batch=4))
    assert four.profiles[0].min[0] == 1 and four.profiles[0].opt[0] == 4 and four.profiles[0].max[0] == 4
    assert four.max_batch == 4 and four.to_dict()["max_batch"] == 4  # what the manifest records

    fixed = make_plan(DESKTOP, frame_info((720, 1280)), "10.3", BuildRequest("desktop", max_batch=4))
    (p,) = fixed.profiles  # only the batch is dynamic
    assert (p.min, p.opt, p.max) == ([1, 720, 1280, 3], [4, 720, 1280, 3], [4, 720, 1280, 3])
    assert fixed.frame_size == [720, 1280]

    static = make_plan(DESKTOP, frame_info((480, 640), batch=1), "10.3", BuildRequest("desktop"))
    assert static.profiles == [] and static.frame_size == [480, 640]
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        make_plan(DESKTOP, frame_info(batch=1), "10.3", BuildRequest("desktop", max_batch=4))

    given = make_plan(DESKTOP, frame_info(), "10.3", BuildRequest("desktop", shapes={"frame": (
        [1, 480, 640, 3], [2, 480, 640, 3], [2, 1080, 1920, 3])}))
    assert given.profiles[0].opt == [2, 480, 640, 3]


def test_cli_shapes_follow_the_input_layout_and_camera_count():
    assert _shape("720x1280", "--opt-shape", frame=True, batch=4) == [4, 720, 1280, 3]
    assert _shape("2x480x640x3", "--max-shape", frame=True) == [2, 480, 640, 3]
    assert _shape("720x1280", "--opt-shape") == [1, 3, 720, 1280]  # logits form: NCHW as before
    assert _shape("1x3x256x320", "--min-shape") == [1, 3, 256, 320]
    with pytest.raises(ConfigError):
        _shape("720x1280x3", "--min-shape", frame=True)


@pytest.fixture(scope="module")
def frame_bundle(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("frame-bundle")
    request = BuildRequest("desktop", form="frame", frame_size=[360, 480], tensorrt="10.3")
    return write_bundle(tiny_onnx, out, DESKTOP, request)


def test_bundle_wraps_the_export_into_the_frame_form(frame_bundle, tiny_onnx, camvid_frame):
    out = frame_bundle.directory
    model = onnx.load(str(out / "segformer-tiny.onnx"))
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("frame", TensorProto.UINT8)
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 360, 480, 3]
    assert (outp.name, outp.type.tensor_type.elem_type) == ("mask", TensorProto.UINT8)
    assert {n.op_type for n in model.graph.node} >= {"ArgMax", "Resize", "Cast"}  # post "dense": for TensorRT
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))
    assert meta["form"] == "frame" and meta["frame_size"] == [360, 480] and meta["extra"]["post"] == "dense"
    assert frame_bundle.ok  # the TensorRT compatibility check ran on the wrapped graph

    # The engine's graph computes what Engine.infer computes from the export, on a real CamVid frame.
    session = ort.InferenceSession(str(out / "segformer-tiny.onnx"), providers=["CPUExecutionProvider"])
    mask = session.run(None, {"frame": camvid_frame[None]})[0][0]
    assert mask.shape == camvid_frame.shape[:2]
    assert (mask == Engine(tiny_onnx).infer(camvid_frame)).mean() >= 0.995

    plan_file = PlanFile.load(out / "plan.json")
    assert plan_file.request.form == "frame" and plan_file.request.frame_size == [360, 480]
    (plan,) = plan_file.plans
    assert plan.form == "frame" and plan.frame_size == [360, 480] and plan.profiles == []
    assert plan_file.model["form"] == "frame" and plan_file.model["inputs"][0]["dtype"] == "uint8"
    assert plan_file.model["wrapped_from"]["source"] == "segformer-tiny.onnx"
    assert "--onnx=segformer-tiny.onnx" in (out / "build_engine_trtexec.sh").read_text()


def test_a_frame_form_export_is_unwrapped_and_rewrapped(frame_bundle, tmp_path, camvid_frame):
    source = frame_bundle.directory / "segformer-tiny.onnx"
    again = write_bundle(source, tmp_path, DESKTOP, BuildRequest("desktop", form="frame", tensorrt="10.3"))
    model = onnx.load(str(tmp_path / "segformer-tiny.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[1].HasField("dim_value") and not dims[2].HasField("dim_value")  # any camera size now
    assert sum(n.op_type == "ArgMax" for n in model.graph.node) == 1  # wrapped once, not twice
    assert again.plan_file.plans[0].profiles[0].opt == [1, 720, 1280, 3]
    frame = cv2.resize(camvid_frame, (480, 360))
    ours = ort.InferenceSession(model.SerializeToString()).run(None, {"frame": frame[None]})[0]
    theirs = ort.InferenceSession(str(source)).run(None, {"frame": frame[None]})[0]
    assert np.array_equal(ours, theirs)


def test_logits_form_keeps_the_export_as_it_is(tiny_onnx, tmp_path):
    bundle = write_bundle(tiny_onnx, tmp_path, DESKTOP, BuildRequest("desktop", tensorrt="10.3", form="logits"))
    assert (tmp_path / "segformer-tiny.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert bundle.plan_file.plans[0].form == "logits" and bundle.plan_file.model["wrapped_from"] is None


def test_cli_build_defaults_to_the_frame_form(tiny_onnx, tmp_path):
    from segrt.cli import app

    runner = CliRunner()
    run = runner.invoke(app, ["build", str(tiny_onnx), "--tensorrt", "10.3", "-o", str(tmp_path / "b"),
                              "--no-engine"], env={"COLUMNS": "200"})
    assert run.exit_code == 0, run.output
    plan = json.loads((tmp_path / "b" / "plan.json").read_text())
    assert plan["request"]["form"] == "frame" and plan["plans"][0]["form"] == "frame"
    assert plan["plans"][0]["profiles"][0]["input"] == "frame"

    run = runner.invoke(app, ["build", str(tiny_onnx), "--form", "logits", "--frame-size", "720x1280",
                              "--check-only"], env={"COLUMNS": "200"})
    assert run.exit_code != 0 and "--form logits" in str(run.exception or run.output)
    run = runner.invoke(app, ["build", str(tiny_onnx), "--max-batch", "4", "--check-only"], env={"COLUMNS": "200"})
    assert run.exit_code != 0 and "fixed batch" in str(run.exception or run.output)


def test_strongly_typed_fp16_file_is_the_wrapped_fp16_network(tiny_onnx, tmp_path, camvid_frame):
    # TensorRT 11 builds FP16 from an FP16 ONNX: the network is converted (and verified) first, then wrapped.
    bundle = write_bundle(tiny_onnx, tmp_path, DESKTOP, BuildRequest("desktop", form="frame", tensorrt="11.0",
                                                                      precision="fp16"), frames=[camvid_frame])
    (plan,) = bundle.plan_file.plans
    assert plan.strongly_typed and plan.onnx == "segformer-tiny.fp16.onnx" and plan.form == "frame"
    assert bundle.fp16_error is not None and bundle.fp16_error[1] > 0.99
    model = onnx.load(str(tmp_path / plan.onnx))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert not list(tmp_path.glob(".*"))  # the scratch network file is gone
    mask = ort.InferenceSession(model.SerializeToString()).run(None, {"frame": camvid_frame[None]})[0][0]
    assert (mask == Engine(tiny_onnx).infer(camvid_frame)).mean() >= 0.99
    assert plan.onnx in bundle.plan_file.model["files"]  # hash-checked on the device like the FP32 file


def test_bundles_carry_portable_ops_when_the_export_has_the_cpu_form(tiny_onnx, tmp_path, camvid_frame):
    """`segrt export` writes LayerNorms for ONNX Runtime's CPU provider; the TensorRT bundle turns them back."""
    from segrt.export.passes.cpu_form import is_cpu_form, to_cpu_ops

    cpu, changes = to_cpu_ops(onnx.load(str(tiny_onnx)))
    assert changes
    source = tmp_path / "cpu" / "tiny.onnx"
    source.parent.mkdir()
    onnx.save(cpu, str(source))
    for form in ("frame", "logits"):
        out = tmp_path / form
        bundle = write_bundle(source, out, DESKTOP, BuildRequest("desktop", form=form, tensorrt="10.3"))
        model = onnx.load(str(out / "tiny.onnx"))
        assert not is_cpu_form(model) and not any(n.op_type == "InstanceNormalization" for n in model.graph.node)
        assert bundle.ok
    session = ort.InferenceSession(str(tmp_path / "frame" / "tiny.onnx"), providers=["CPUExecutionProvider"])
    mask = session.run(None, {"frame": camvid_frame[None]})[0][0]
    assert (mask == Engine(source).infer(camvid_frame)).mean() >= 0.995
