"""`segrt verify` on models that cannot be compared: refused before running, naming the mismatch; outputs
are matched by position, so a candidate whose output has another name still verifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.engines.verify import verify
from segrt.runtime.errors import BackendError, ConfigError

DYNAMIC = ("N", 3, "H", "W")


def conv_model(path: Path, *, classes: int = 11, in_shape: tuple = DYNAMIC, out_name: str = "output",
               inputs: int = 1, extra_output: bool = False, seed: int = 0, reshape: list[int] | None = None) -> Path:
    """A 1x1 convolution from the image to ``classes`` logits (a stand-in segmentation model)."""
    weights = np.random.default_rng(seed).standard_normal((classes, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"])]
    initializers = [numpy_helper.from_array(weights, "w")]
    last = "logits"
    if reshape is not None:  # a shape only wrong at run time: the declared output stays dynamic
        initializers.append(numpy_helper.from_array(np.array(reshape, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [last, "shape"], ["reshaped"]))
        last = "reshaped"
    nodes.append(helper.make_node("Identity", [last], [out_name]))
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)]
    if inputs == 2:
        nodes.append(helper.make_node("Identity", ["y"], ["y_out"]))
        graph_inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, in_shape))
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ("N", classes, "h", "w"))]
    if extra_output or inputs == 2:
        name = "y_out" if inputs == 2 else "extra"
        if extra_output:
            nodes.append(helper.make_node("Identity", ["logits"], ["extra"]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ("N", classes, "h", "w")))
    graph = helper.make_graph(nodes, "g", graph_inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture()
def frames(camvid_frame) -> list[np.ndarray]:
    return [camvid_frame]


def test_outputs_are_matched_by_position_not_name(tmp_path, frames):
    reference = conv_model(tmp_path / "ref.onnx", in_shape=(1, 3, 64, 96))
    same = conv_model(tmp_path / "same.onnx", in_shape=(1, 3, 64, 96), out_name="out")
    report = verify(reference, same, frames)
    assert report.passed and report.within_tolerance and report.label_agreement == 1.0
    assert [o.name for o in report.outputs] == ["output"] and report.outputs[0].max_abs == 0.0
    other = conv_model(tmp_path / "other.onnx", in_shape=(1, 3, 64, 96), out_name="out", seed=1)
    report = verify(reference, other, frames)  # other weights under another name: compared, and they differ
    assert not report.passed and report.outputs[0].max_abs > 0.1


def test_a_dynamic_reference_runs_at_the_fixed_size_of_the_candidate(tmp_path, frames):
    report = verify(conv_model(tmp_path / "ref.onnx"), conv_model(tmp_path / "c.onnx", in_shape=(1, 3, 48, 80)),
                    frames)
    assert report.passed and report.outputs[0].max_abs == 0.0


@pytest.mark.parametrize(("candidate", "message"), [
    (dict(in_shape=(1, 3, 32, 96)), r"c\.onnx takes 32x96 images but ref\.onnx takes 64x96"),
    (dict(in_shape=(1, 3, 64, 96), classes=5), r"output 0 differs in shape \(class count\): c\.onnx 'output' is "
                                               r"\?x5x\?x\?, ref\.onnx 'output' is \?x11x\?x\?"),
    (dict(in_shape=(1, 3, 64, 96), extra_output=True), r"c\.onnx has 2 output\(s\) but ref\.onnx has 1"),
    (dict(inputs=2), r"c\.onnx: expected one image input, found 2"),
    (dict(in_shape=("N", 1, "H", "W")), r"c\.onnx: input 'x' has shape \?x1x\?x\?; expected N x 3 x H x W"),
    (dict(in_shape=(3, "H", "W")), r"c\.onnx: input 'x' has shape 3x\?x\?; expected N x 3 x H x W"),
])
def test_incomparable_models_are_refused_before_running(tmp_path, frames, candidate, message):
    reference = conv_model(tmp_path / "ref.onnx", in_shape=(1, 3, 64, 96))
    with pytest.raises(ConfigError, match=message):
        verify(reference, conv_model(tmp_path / "c.onnx", **candidate), frames)


def test_a_class_count_mismatch_with_dynamic_shapes_is_found_after_running(tmp_path, frames):
    model = onnx.load(conv_model(tmp_path / "c.onnx", classes=5))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "K"  # nothing declared statically
    onnx.save(model, tmp_path / "c.onnx")
    with pytest.raises(ConfigError, match=r"output 0 differs in shape \(class count\): c\.onnx 'output' is 1x5x"):
        verify(conv_model(tmp_path / "ref.onnx"), tmp_path / "c.onnx", frames)


def test_a_run_time_failure_is_a_backend_error(tmp_path, frames):
    broken = conv_model(tmp_path / "c.onnx", reshape=[1, 11, -1, 7])  # 64*96 pixels are not a multiple of 7
    with pytest.raises(BackendError, match=r"running c\.onnx failed: .*Reshape"):
        verify(conv_model(tmp_path / "ref.onnx", in_shape=(1, 3, 64, 96)), broken, frames)


def test_frame_form_models_verify_on_frames_of_their_own_size(tiny_frame_onnx, tmp_path, camvid_frame):
    """Two frame-form models compare mask to mask on the camera's frames (no float preprocessing by verify)."""
    import shutil

    candidate = shutil.copy(tiny_frame_onnx, tmp_path / "candidate.onnx")
    report = verify(tiny_frame_onnx, candidate, [camvid_frame, camvid_frame[:200, :300]])
    assert report.passed and report.label_agreement == 1.0 and report.images == 2


def test_a_frame_form_model_is_not_compared_with_a_logits_model(tiny_frame_onnx, tiny_onnx, camvid_frame):
    with pytest.raises(ConfigError, match="frame-form model"):
        verify(tiny_onnx, tiny_frame_onnx, [camvid_frame])
    with pytest.raises(ConfigError, match="form"):
        verify(tiny_frame_onnx, tiny_onnx, [camvid_frame])
