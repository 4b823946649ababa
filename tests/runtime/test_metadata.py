"""segrt model metadata: one format (``ModelMetadata``), every field type-checked, and the record checked
against the graph it travels with. Hostile ONNX files are built with the onnx package alone (no torch):
each one is refused at load with ``ModelLoadError`` naming the field, before anything is run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from segrt.runtime.engine import Engine
from segrt.runtime.errors import ModelLoadError, SegrtError
from segrt.runtime.metadata import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_CLASSES,
    MAX_INPUT_PIXELS,
    MAX_INPUT_SIDE,
    METADATA_KEY,
    STD_RANGE,
    ModelMetadata,
    check_against_io,
    check_output,
)

REPO = Path(__file__).resolve().parents[2]
H, W = 16, 24  # the test graphs' input size

# ------------------------------------------------------------------------------------------ graphs


def conv_logits(k: int, in_shape=(1, 3, H, W)) -> onnx.GraphProto:
    """(N, 3, h, w) -> (N, k, h, w) float logits by a 1x1 convolution with fixed weights."""
    weight = (np.arange(k * 3, dtype=np.float32).reshape(k, 3, 1, 1) % 7 - 3) / 3
    out_shape = [in_shape[0], k, in_shape[2], in_shape[3]]
    return helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "logits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [numpy_helper.from_array(weight, "w")])


def argmax_labels(k: int, keepdims: bool = False, dtype: int = TensorProto.UINT8) -> onnx.GraphProto:
    """The logits graph followed by an in-graph ArgMax: (N, h, w) (or (N, 1, h, w)) integer labels."""
    graph = conv_logits(k)
    graph.node.extend([helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=int(keepdims)),
                       helper.make_node("Cast", ["idx"], ["labels"], to=dtype)])
    shape = [1, 1, H, W] if keepdims else [1, H, W]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("labels", dtype, shape))
    return graph


def identity(in_shape, elem=TensorProto.FLOAT) -> onnx.GraphProto:
    """The input returned as is: its channel dimension can be dynamic, so only the run shows it."""
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", elem, list(in_shape))],
        [helper.make_tensor_value_info("y", elem, list(in_shape))])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload  # wire type 2: length-delimited


def write(folder: Path, graph: onnx.GraphProto, meta: str | bytes | dict | None, name: str = "m.onnx") -> Path:
    """The graph as a model file whose segrt metadata is ``meta`` exactly as given (a dict as JSON).

    The metadata entry is appended as raw protobuf (ModelProto field 14, StringStringEntryProto key 1 and
    value 2): the protobuf API refuses to write the non-UTF-8 text a hostile file may hold."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    if meta is not None:
        raw = json.dumps(meta).encode() if isinstance(meta, dict) else meta.encode() if isinstance(meta, str) else meta
        data += _field(14, _field(1, METADATA_KEY.encode()) + _field(2, raw))
    path = folder / name
    path.write_bytes(data)
    return path


def valid(k: int = 4, **fields) -> dict:
    return {"classes": [f"c{i}" for i in range(k)], "input_size": [H, W], "output": "logits", **fields}


def refused_naming(path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        Engine(path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not named in: {message}"
    return message


def frame(h: int = 30, w: int = 40) -> np.ndarray:
    return (np.arange(h * w * 3, dtype=np.uint32).reshape(h, w, 3) * 37 % 251).astype(np.uint8)


# ------------------------------------------------------------------------------------------ field types and ranges

BAD_FIELDS: dict[str, list[Any]] = {
    # field: values that must be refused (each as the only wrong field of an otherwise valid record)
    "classes": ["abc", [], [1, 2, 3, 4], [{"a": 1}, "b", "c", "d"], None, {"0": "a"}, ["a\x1b[31m", "b", "c", "d"],
                ["x" * 1000, "b", "c", "d"]],
    "palette": ["red", [[999, 0, 0]] * 4, [[1, 2]] * 4, [[0, 0, 0]] * 3, [[0, 0, 0]] * 5, [[1.5, 0, 0]] * 4,
                [[True, 0, 0]] * 4, [[-1, 0, 0]] * 4, [["1", "2", "3"]] * 4, [None] * 4],
    "input_size": ["512x512", [512], [H, W, 3], [0, W], [H, -W], [60000, 60000], [MAX_INPUT_SIDE + 1, W],
                   [MAX_INPUT_SIDE, MAX_INPUT_SIDE],
                   [16.0, 24.0], [True, W], {"h": H, "w": W}, "16"],
    "mean": [[1, 2], "abc", ["a", "b", "c"], None, [1, 2, 3, 4], [True, 0, 0], 0.5],
    "std": [[0, 0, 0], [-1, 1, 1], [1, 1], [0.2, 0.0, 0.2], None, "0.2"],
    "output": ["mask", 3, None, "LOGITS", ["logits"]],
    "source": [5, None, ["x"]],
    "segrt_version": [0.1, {}],
    "architecture": [{"depths": [2, 2]}],
    "extra": ["x", {"a": 1}, [["a", "b"]], None],
}


@pytest.mark.parametrize("field,value", [(f, v) for f, values in BAD_FIELDS.items() for v in values],
                         ids=lambda v: str(v)[:20])
def test_a_wrongly_typed_or_out_of_range_field_is_refused_naming_it(tmp_path, field, value):
    path = write(tmp_path, conv_logits(4), valid(**{field: value}))
    refused_naming(path, repr(field))


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("field", ["mean", "std"])
def test_non_finite_normalisation_is_refused(tmp_path, field, text):
    good = "[0.5, 0.5, 0.5]"
    body = json.dumps(valid()).rstrip("}") + f', "{field}": [{text}, 0.5, 0.5], '
    body += f'"{"std" if field == "mean" else "mean"}": {good}}}'
    refused_naming(write(tmp_path, conv_logits(4), body), repr(field))


@pytest.mark.parametrize("text", ["[1,2,3]", "null", '"segrt"', "42", "true", "[]"])
def test_metadata_that_is_not_a_json_object_is_refused(tmp_path, text):
    refused_naming(write(tmp_path, conv_logits(4), text), "JSON object")


@pytest.mark.parametrize("text", ["{", "", "{'classes': ['a']}", "[" * 100])
def test_metadata_that_is_not_json_is_refused(tmp_path, text):
    refused_naming(write(tmp_path, conv_logits(4), text), "JSON")


def test_absurdly_nested_json_is_refused_without_a_recursion_error():
    with pytest.raises(ModelLoadError, match="JSON"):
        ModelMetadata.from_json("[" * 200_000 + "]" * 200_000)


def test_metadata_that_is_not_utf8_is_refused(tmp_path):
    refused_naming(write(tmp_path, conv_logits(4), b'{"classes": ["\xff\xfe"]}'), "UTF-8")


def test_metadata_without_classes_is_refused(tmp_path):
    refused_naming(write(tmp_path, conv_logits(4), {"input_size": [H, W]}), "'classes'", "missing")


def test_more_classes_than_masks_can_hold_are_refused():
    with pytest.raises(ModelLoadError, match="'classes'"):
        ModelMetadata(classes=[str(i) for i in range(MAX_CLASSES + 1)])


def test_duplicate_segrt_entries_are_refused():
    model = helper.make_model(conv_logits(4))
    for n in (2, 3):
        model.metadata_props.add(key=METADATA_KEY, value=json.dumps(valid(k=n)))
    with pytest.raises(ModelLoadError, match="2 segrt metadata entries"):
        ModelMetadata.from_onnx(model)


# ------------------------------------------------------------------------------------------ record vs graph


def test_labels_declared_on_a_logits_graph_are_refused(tmp_path):
    refused_naming(write(tmp_path, conv_logits(4), valid(output="labels")), "'output'", "labels")


def test_logits_declared_on_a_labels_graph_are_refused(tmp_path):
    refused_naming(write(tmp_path, argmax_labels(4), valid(output="logits")), "'output'", "logits")


def test_class_count_must_match_the_logits_channels(tmp_path):
    message = refused_naming(write(tmp_path, conv_logits(5), valid(k=4)), "'classes'")
    assert "4 classes" in message and "5 channels" in message


def test_input_size_must_match_a_static_graph(tmp_path):
    refused_naming(write(tmp_path, conv_logits(4), valid(input_size=[H + 8, W])), "'input_size'", f"{H}x{W}")


def test_input_size_must_match_the_static_side_of_a_half_dynamic_graph(tmp_path):
    graph = conv_logits(4, in_shape=(1, 3, H, "w"))
    refused_naming(write(tmp_path, graph, valid(input_size=[H * 2, W])), "'input_size'")


def test_labels_too_narrow_for_the_class_count_are_refused(tmp_path):
    k = 300  # uint8 labels would wrap class 299 to 43
    refused_naming(write(tmp_path, argmax_labels(k), valid(k=k, output="labels")), "'classes'", "uint8")


def test_logits_of_an_integer_type_are_refused(tmp_path):
    graph = identity([1, 3, H, W], TensorProto.INT32)
    graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT  # input float, output integer
    graph.node[0].op_type = "Cast"
    graph.node[0].attribute.append(helper.make_attribute("to", TensorProto.INT32))
    refused_naming(write(tmp_path, graph, valid(k=3)), "'output'", "int32")


def test_a_huge_static_input_is_refused_before_any_allocation(tmp_path):
    side = 60000
    graph = conv_logits(4, in_shape=(1, 3, side, side))
    message = refused_naming(write(tmp_path, graph, None), "60000")
    assert str(MAX_INPUT_SIDE) in message


def test_a_dynamic_graph_whose_run_contradicts_the_metadata_is_refused_at_infer(tmp_path):
    # The channel dimension is dynamic, so the class count can only be checked when the graph has run:
    # 3 channels come back where the metadata names 2 classes.
    path = write(tmp_path, identity([1, "c", H, W]), valid(k=2))
    engine = Engine(path)
    with pytest.raises(ModelLoadError, match="'classes'"):
        engine.infer(frame())


# ------------------------------------------------------------------------------------------ what loads


def test_a_minimal_record_loads_with_the_documented_defaults(tmp_path):
    with Engine(write(tmp_path, conv_logits(3), {"classes": ["a", "b", "c"]})) as engine:
        meta = engine.metadata
        assert (meta.mean, meta.std, meta.output) == (IMAGENET_MEAN, IMAGENET_STD, "logits")
        assert meta.input_size == (H, W)  # taken from the static graph
        assert len(meta.palette) == 3 and meta.palette[0] == (0, 0, 0)
        assert engine.infer(frame()).shape == (30, 40)


def test_a_foreign_onnx_without_metadata_keeps_todays_defaults(tmp_path):
    with Engine(write(tmp_path, conv_logits(5), None)) as engine:
        assert engine.classes == [f"class_{i}" for i in range(5)]
        assert engine.input_size == (H, W)
        assert engine.metadata.mean == IMAGENET_MEAN


def test_a_dynamic_graph_keeps_its_declared_size(tmp_path):
    graph = conv_logits(4, in_shape=("n", 3, "h", "w"))
    with Engine(write(tmp_path, graph, valid(input_size=[32, 48]))) as engine:
        assert engine.input_size == (32, 48)
        assert engine.infer(frame()).shape == (30, 40)


def test_a_record_without_input_size_on_a_dynamic_graph_runs_frames_at_their_size(tmp_path):
    graph = conv_logits(4, in_shape=("n", 3, "h", "w"))
    with Engine(write(tmp_path, graph, {"classes": ["a", "b", "c", "d"]})) as engine:
        assert engine.input_size is None
        assert engine.infer(frame(20, 28)).shape == (20, 28)


def test_rank4_labels_with_one_channel_give_the_same_mask_as_rank3_labels(tmp_path):
    flat = Engine(write(tmp_path, argmax_labels(4), valid(output="labels"), "flat.onnx"))
    kept = Engine(write(tmp_path, argmax_labels(4, keepdims=True), valid(output="labels"), "kept.onnx"))
    logits = Engine(write(tmp_path, conv_logits(4), valid(), "logits.onnx"))
    f = frame(H, W)  # the network size: no resize, so labels and argmax of logits agree exactly
    expected = logits.infer(f)
    assert len(np.unique(expected)) > 1  # the test model separates classes
    np.testing.assert_array_equal(flat.infer(f), expected)
    np.testing.assert_array_equal(kept.infer(f), expected)


@pytest.mark.parametrize("k,dtype", [(2, np.uint8), (256, np.uint8), (257, np.uint16), (300, np.uint16),
                                     (MAX_CLASSES, np.uint16)])
def test_mask_dtype_holds_every_label(k, dtype):
    meta = ModelMetadata(classes=[str(i) for i in range(k)])
    assert meta.mask_dtype == np.dtype(dtype)
    assert np.iinfo(meta.mask_dtype).max >= k - 1


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.onnx")), ids=lambda p: p.name)
def test_bundled_models_load_and_their_record_round_trips(path):
    with Engine(path) as engine:
        meta = engine.metadata
        assert meta.num_classes == 11 and meta.input_size is not None
    proto = onnx.load(str(path), load_external_data=False)
    read = ModelMetadata.from_onnx(proto)
    assert read == meta
    assert ModelMetadata.from_json(read.to_json()) == read
    assert ModelMetadata(**read.__dict__) == read  # the copy idiom export and `segrt exit` use


def test_to_onnx_replaces_the_segrt_entry_in_place_and_keeps_the_others():
    model = helper.make_model(conv_logits(4))
    model.metadata_props.add(key="author", value="someone")
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(valid(k=2)))
    model.metadata_props.add(key="z", value="last")
    new = ModelMetadata.from_dict(valid(k=4))
    new.to_onnx(model)
    assert [p.key for p in model.metadata_props] == ["author", METADATA_KEY, "z"]
    assert ModelMetadata.from_onnx(model) == new
    assert ModelMetadata.from_onnx(helper.make_model(conv_logits(4))) is None
    assert ModelMetadata.from_onnx({METADATA_KEY: new.to_json()}) == new  # ONNX Runtime's custom_metadata_map


# ------------------------------------------------------------------------------------------ the pure checks


def test_check_against_io_is_usable_without_a_session():
    meta = ModelMetadata.from_dict(valid(k=4, input_size=None))
    resolved = check_against_io(meta, (1, 3, H, W), (1, 4, H // 4, W // 4), np.dtype(np.float16), "engine")
    assert resolved.input_size == (H, W) and meta.input_size is None  # the argument is not mutated
    with pytest.raises(ModelLoadError, match="'classes'"):
        check_against_io(meta, (1, 3, H, W), (1, 5, H, W), np.dtype(np.float32), "engine")
    with pytest.raises(ModelLoadError, match="not \\(N, 3, H, W\\)"):
        check_against_io(meta, (1, 4, H, W), None, None, "engine")
    assert check_against_io(meta, (None, 3, None, None), None, None).input_size is None


def test_check_output_refuses_a_batch_of_the_wrong_size():
    meta = ModelMetadata.from_dict(valid(k=4))
    with pytest.raises(ModelLoadError, match="batch of 2"):
        check_output(meta, np.zeros((1, 4, 4, 6), np.float32), batch=2)


# ------------------------------------------------------------------------------------------ property tests

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25)
FIELDS = ["classes", "palette", "input_size", "mean", "std", "output", "source", "extra", "architecture", "form",
          "frame_size", "output_stride"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(JSON, st.fixed_dictionaries({}, optional={f: JSON for f in FIELDS}),
                     st.fixed_dictionaries({"classes": st.lists(st.text(max_size=5), min_size=1, max_size=4)},
                                           optional={f: JSON for f in FIELDS[1:]})))
def test_any_json_either_gives_a_record_that_keeps_the_rules_or_a_model_load_error(raw):
    try:
        text = json.dumps(raw)
    except ValueError:
        return
    try:
        meta = ModelMetadata.from_json(text)
    except ModelLoadError:
        return
    except Exception as exc:  # anything else would escape a robot's `except SegrtError`
        pytest.fail(f"{type(exc).__name__} escaped for {text[:200]}: {exc}")
    assert all(isinstance(c, str) for c in meta.classes) and 1 <= meta.num_classes <= MAX_CLASSES
    assert len(meta.palette) == meta.num_classes
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in meta.palette)
    assert meta.input_size is None or all(isinstance(v, int) and 1 <= v <= MAX_INPUT_SIDE for v in meta.input_size)
    assert meta.input_size is None or meta.input_size[0] * meta.input_size[1] <= MAX_INPUT_PIXELS
    assert all(math.isfinite(v) for v in meta.mean) and all(math.isfinite(v) and v > 0 for v in meta.std)
    assert (meta.form, meta.output) in {("tensor", "logits"), ("tensor", "labels"), ("frame", "mask")}
    assert meta.frame_size is None or (meta.form == "frame" and 1 <= min(meta.frame_size))
    assert isinstance(meta.output_stride, int) and (meta.output_stride == 1 or meta.form == "frame")
    assert ModelMetadata.from_json(meta.to_json()) == meta


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 300), h=st.integers(1, MAX_INPUT_SIDE), w_share=st.floats(0, 1),
       std=st.tuples(*[st.floats(*STD_RANGE)] * 3), output=st.sampled_from(["logits", "labels"]))
def test_valid_records_round_trip_through_onnx(k, h, w_share, std, output):
    w = max(1, round(w_share * min(MAX_INPUT_SIDE, MAX_INPUT_PIXELS // h)))  # every size up to the bounds
    meta = ModelMetadata(classes=[f"n{i}" for i in range(k)], input_size=(h, w), std=std, output=output)
    model = helper.make_model(conv_logits(1))
    meta.to_onnx(model)
    assert ModelMetadata.from_onnx(model) == meta


def test_every_refusal_is_a_segrt_error():
    # ModelLoadError must stay catchable by a robot's single `except SegrtError`
    with pytest.raises(SegrtError):
        ModelMetadata.from_json("[]")


# ------------------------------------------------------------------------------------------ segrt info


def segrt_info(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segrt", "info", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_segrt_info_refuses_class_names_that_are_not_text(tmp_path):
    r = segrt_info(write(tmp_path, conv_logits(2), valid(k=2, classes=[{"name": "road"}, "sky"])))
    assert r.returncode == 2 and "ModelLoadError" in r.stderr and "'classes'" in r.stderr, r.stderr


def test_segrt_info_prints_class_names_literally(tmp_path):
    names = ["[/]", "[bold]road"]  # rich markup would raise on the first and swallow "[bold]"
    r = segrt_info(write(tmp_path, conv_logits(2), valid(k=2, classes=names)))
    assert r.returncode == 0, r.stderr
    assert "[/], [bold]road" in r.stdout.replace("\n", "")


@pytest.mark.parametrize("field, value", [
    ("std", [10**400, 1, 1]),  # a JSON integer float() cannot hold
    ("std", [1e-300, 1e-300, 1e-300]),  # 0 in float32: every pixel would divide by zero
    ("std", [1e39, 1e39, 1e39]),  # inf in float32: every input would be 0
    ("mean", [1e39, 0, 0]),
])
def test_pixel_statistics_that_break_float32_normalisation_are_refused(field, value):
    record = json.dumps({"classes": ["a", "b"], field: value})
    with pytest.raises(ModelLoadError, match=field):
        ModelMetadata.from_json(record)
