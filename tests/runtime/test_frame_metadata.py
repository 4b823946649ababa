"""Metadata of frame-form models (issue 18): ``form``, ``frame_size``, ``output_stride`` and output kind
``mask``, each checked like the other fields (ModelLoadError naming the field), round-tripped through JSON
and ONNX, checked against the graph's I/O at load (check_against_io) and against each mask at run time
(check_output: BackendError, never a silent wrong mask). Old records without the keys read as form tensor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from segrt.runtime.errors import BackendError, ModelLoadError
from segrt.runtime.metadata import (
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    MAX_OUTPUT_STRIDE,
    ModelMetadata,
    check_against_io,
    check_output,
)


def frame_record(k: int = 4, **fields) -> dict:
    return {"classes": [f"c{i}" for i in range(k)], "input_size": [64, 80], "form": "frame", "output": "mask",
            **fields}


BAD_FRAME_FIELDS = {
    "form": ["Frame", "", 3, None, ["frame"], "tensors"],
    "frame_size": ["720x1280", [720], [720, 1280, 3], [0, 1280], [-720, 1280], [MAX_INPUT_SIDE + 1, 16],
                   [MAX_INPUT_SIDE, MAX_INPUT_SIDE], [720.0, 1280.0], [True, 1280], {"h": 720}],
    "output_stride": [0, -1, MAX_OUTPUT_STRIDE + 1, 1.5, 2.0, True, "2", None, [2]],
    "output": ["logits", "labels", "MASK", 3],
}


@pytest.mark.parametrize("field,value", [(f, v) for f, values in BAD_FRAME_FIELDS.items() for v in values],
                         ids=lambda v: str(v)[:20])
def test_a_wrong_frame_field_is_refused_naming_it(field, value):
    with pytest.raises(ModelLoadError, match=f"'{field}'"):
        ModelMetadata.from_json(json.dumps(frame_record(**{field: value})))


@pytest.mark.parametrize("fields, name", [
    ({"output": "mask"}, "output"),  # a mask from a tensor-form record
    ({"frame_size": [720, 1280]}, "frame_size"),
    ({"output_stride": 2}, "output_stride"),
])
def test_frame_fields_on_a_tensor_record_are_refused(fields, name):
    with pytest.raises(ModelLoadError, match=f"'{name}'"):
        ModelMetadata.from_dict({"classes": ["a", "b"], **fields})


def test_an_old_record_reads_as_form_tensor_and_a_frame_record_defaults_its_output():
    old = ModelMetadata.from_json(json.dumps({"classes": ["a", "b"], "input_size": [64, 80], "output": "labels"}))
    assert (old.form, old.frame_size, old.output_stride, old.output) == ("tensor", None, 1, "labels")
    assert ModelMetadata(classes=["a"]).output == "logits"
    frame = ModelMetadata(classes=["a"], form="frame")
    assert frame.output == "mask" and json.loads(frame.to_json())["output"] == "mask"


@settings(max_examples=80, deadline=None)
@given(k=st.integers(1, 70000), h=st.integers(1, MAX_INPUT_SIDE), w_share=st.floats(0, 1),
       fixed=st.booleans(), stride=st.integers(1, MAX_OUTPUT_STRIDE), network=st.booleans())
def test_frame_records_round_trip_through_json_and_onnx(k, h, w_share, fixed, stride, network):
    w = max(1, round(w_share * min(MAX_INPUT_SIDE, MAX_INPUT_PIXELS // h)))
    fields = dict(classes=[f"n{i}" for i in range(k)], form="frame", output="mask",
                  frame_size=(h, w) if fixed else None, output_stride=stride,
                  input_size=(h, w) if network else None)
    if k > 65536:
        with pytest.raises(ModelLoadError, match="'classes'"):
            ModelMetadata(**fields)
        return
    meta = ModelMetadata(**fields)
    assert ModelMetadata.from_json(meta.to_json()) == meta
    model = helper.make_model(helper.make_graph([], "g", [], []))
    meta.to_onnx(model)
    assert ModelMetadata.from_onnx(model) == meta
    assert meta.mask_size((h, w)) == (-(-h // stride), -(-w // stride))


# ------------------------------------------------------------------------------------------ against the graph


def test_check_against_io_for_frame_graphs():
    meta = ModelMetadata.from_dict(frame_record(k=4, output_stride=2))
    u8, f32 = np.dtype(np.uint8), np.dtype(np.float32)
    resolved = check_against_io(meta, (1, 360, 480, 3), (1, 180, 240), u8, "engine", input_dtype=u8)
    assert resolved.frame_size == (360, 480) and meta.frame_size is None  # filled from the static graph
    assert check_against_io(meta, (None, None, None, 3), (None, None, None), np.dtype(np.int32),
                            input_dtype=u8).frame_size is None
    refusals = [
        (((1, 360, 480, 3), None, None, f32), "'form' is 'frame'.*float32"),
        (((1, 3, 360, 480), None, None, u8), r"not \(N, H, W, 3\)"),
        (((1, 360, 480, None), None, None, u8), r"not \(N, H, W, 3\)"),
        (((1, 360, 480, 3), (1, 180, 240), np.dtype(np.int64), u8), "'output'.*int64"),
        (((1, 360, 480, 3), (1, 180, 240), np.dtype(np.float32), u8), "'output'.*float32"),
        (((1, 360, 480, 3), (1, 4, 180, 240), u8, u8), r"'output' is 'mask'.*\(N, Hm, Wm\)"),
        (((1, 360, 480, 3), (1, 360, 240), u8, u8), "'output_stride' is 2.*height is 360"),
        (((2, 360, 480, 3), (1, 180, 240), u8, u8), "1 masks for a batch of 2"),
        (((1, 360, MAX_INPUT_SIDE + 1, 3), None, None, u8), "width"),
    ]
    for (shape, out_shape, out_dtype, in_dtype), match in refusals:
        with pytest.raises(ModelLoadError, match=match):
            check_against_io(meta, shape, out_shape, out_dtype, "engine", input_dtype=in_dtype)
    fixed = ModelMetadata.from_dict(frame_record(frame_size=[720, 1280]))
    with pytest.raises(ModelLoadError, match="'frame_size' is 720x1280.*360x\\?"):
        check_against_io(fixed, (1, 360, None, 3), None, None)
    # a declared frame size fixes the mask size of a graph whose frame dimensions are dynamic
    strided = ModelMetadata.from_dict(frame_record(frame_size=[720, 1280], output_stride=4))
    check_against_io(strided, (1, None, None, 3), (1, 180, 320), u8)
    with pytest.raises(ModelLoadError, match="'output_stride'"):
        check_against_io(strided, (1, None, None, 3), (1, 360, 640), u8)


def test_a_tensor_record_on_a_uint8_frame_input_is_refused():
    meta = ModelMetadata.from_dict({"classes": ["a", "b"]})
    with pytest.raises(ModelLoadError, match="'form' is 'tensor'.*uint8"):
        check_against_io(meta, (1, 360, 480, 3), None, None, input_dtype=np.dtype(np.uint8))
    with pytest.raises(ModelLoadError, match="frame-form graph"):
        check_against_io(meta, (1, 360, 480, 3), None, None)


# ------------------------------------------------------------------------------------------ each mask


def test_check_output_passes_a_right_mask_and_converts_it_to_the_mask_dtype():
    few = ModelMetadata.from_dict(frame_record(k=11, output_stride=4))
    mask = np.random.default_rng(0).integers(0, 11, (2, 90, 120)).astype(np.int32)
    out = check_output(few, mask, 2, frame_hw=(360, 480))
    assert out.dtype == np.uint8 and np.array_equal(out, mask)
    many = ModelMetadata.from_dict(frame_record(k=300))
    wide = np.random.default_rng(1).integers(0, 300, (1, 5, 7)).astype(np.int32)
    out = check_output(many, wide, 1, frame_hw=(5, 7))
    assert out.dtype == np.uint16 and np.array_equal(out, wide)
    u8 = mask.astype(np.uint8)
    assert check_output(few, u8, 2, frame_hw=(360, 480)) is u8  # nothing to convert: no copy


@pytest.mark.parametrize("mask, batch, frame_hw, match", [
    (np.full((1, 90, 120), 11, np.uint8), 1, (360, 480), "label 11, outside 0..10"),
    (np.full((1, 90, 120), 300, np.uint16), 1, (360, 480), "label 300"),
    (np.full((1, 90, 120), -1, np.int32), 1, (360, 480), "label -1"),
    (np.zeros((1, 360, 480), np.uint8), 1, (360, 480), r"shape \(1, 360, 480\).*expected \(1, 90, 120\)"),
    (np.zeros((2, 90, 120), np.uint8), 1, (360, 480), "for a batch of 1"),
    (np.zeros((1, 1, 90, 120), np.uint8), 1, (360, 480), "shape"),
    (np.zeros((1, 0, 120), np.uint8), 1, None, "shape"),
    (np.zeros((1, 90, 120), np.int64), 1, (360, 480), "int64 mask"),
    (np.zeros((1, 90, 120), np.float32), 1, (360, 480), "float32 mask"),
    ([[0]], 1, None, "not a mask array"),
])
def test_check_output_refuses_a_lying_mask_with_a_backend_error(mask, batch, frame_hw, match):
    meta = ModelMetadata.from_dict(frame_record(k=11, output_stride=4))
    with pytest.raises(BackendError, match=match):
        check_output(meta, mask, batch, "engine", frame_hw=frame_hw)


def test_an_onnx_frame_graph_without_segrt_metadata_is_refused(tmp_path):
    """A foreign uint8 NHWC graph is described by today's tensor defaults, which its input contradicts."""
    import onnx

    from segrt import Engine

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 8, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(tmp_path / "f.onnx"))
    with pytest.raises(ModelLoadError):
        Engine(tmp_path / "f.onnx")
