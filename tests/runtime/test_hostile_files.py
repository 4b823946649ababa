"""Hostile and broken ONNX files: refused with a typed segrt error that names the problem, before anything
unsafe happens (no external file read). No torch: the models are built with the onnx package or committed.
Hostile checkpoints: tests/export/test_hostile_checkpoints.py; engines: tests/engines/test_hostile_engines.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.runtime.engine import Engine
from segrt.runtime.errors import ModelLoadError, UnsafeModelError

# ------------------------------------------------------------------------------------------ ONNX


def write_external_model(folder: Path, location: str, data_file: Path | None = None) -> Path:
    """A foreign 1x1-conv model (3 -> 2 classes on 8x8) whose weight lives in external data at ``location``."""
    weight = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1) / 10
    data_file = data_file or folder / location
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(weight.tobytes())
    tensor = numpy_helper.from_array(weight, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(weight.nbytes))):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def ort_must_not_open(monkeypatch):
    """Fails the test if ONNX Runtime is asked to open a session (i.e. would read the external file)."""
    import onnxruntime

    def refuse(*args, **kwargs):
        raise AssertionError("ONNX Runtime opened a model that should have been refused first")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def test_external_data_next_to_the_model_loads_and_runs(tmp_path):
    path = write_external_model(tmp_path / "m", "weights/w.bin")
    with Engine(path) as engine:
        assert engine.classes == ["class_0", "class_1"]
        mask = engine.infer(np.full((8, 8, 3), 200, np.uint8))
    # Class 1's weights (0.3, 0.4, 0.5) exceed class 0's (0, 0.1, 0.2) for any positive pixel:
    # the weights really came from the external file.
    assert mask.shape == (8, 8) and (mask == 1).all()


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, ort_must_not_open, kind):
    secret = tmp_path / "secret" / "credentials.bin"
    folder = tmp_path / "model"
    folder.mkdir()
    if kind == "parent":
        path = write_external_model(folder, "../secret/credentials.bin", data_file=secret)
    elif kind == "absolute":
        path = write_external_model(folder, str(secret), data_file=secret)
    else:
        secret.parent.mkdir(parents=True)
        os.symlink(secret, folder / "w.bin")
        path = write_external_model(folder, "w.bin", data_file=secret)
    with pytest.raises(UnsafeModelError, match="outside the model's folder"):
        Engine(path)


def test_external_data_in_a_constant_of_a_subgraph_is_checked(tmp_path, ort_must_not_open):
    path = write_external_model(tmp_path, "w.bin")
    model = onnx.load(str(path), load_external_data=False)
    hidden = onnx.TensorProto()
    hidden.CopyFrom(model.graph.initializer[0])
    hidden.name = "hidden"
    hidden.external_data[0].value = "../../elsewhere.bin"
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=hidden)], "branch", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeModelError, match="hidden"):
        Engine(path)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "text"])
def test_broken_onnx_files_are_model_load_errors(tmp_path, tiny_onnx, damage):
    data = tiny_onnx.read_bytes()
    broken = {"truncated": data[: len(data) // 3], "empty": b"",
              "flipped": data[:200] + bytes(b ^ 0x5A for b in data[200:4000]) + data[4000:],
              "text": b"this is not a model\n" * 50}[damage]
    path = tmp_path / "broken.onnx"
    path.write_bytes(broken)
    with pytest.raises(ModelLoadError) as info:
        Engine(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("too_new", ["ir", "opset"])
def test_a_model_newer_than_onnx_runtime_reads_says_what_to_do(tmp_path, tiny_onnx, too_new):
    """An IR version or opset past what the installed ONNX Runtime reads (onnxruntime 1.17 stops at IR 9 and opset
    20): a ModelLoadError naming the file, what is too new, the installed version and the ways out."""
    import onnxruntime

    model = onnx.load(str(tiny_onnx))
    if too_new == "ir":
        model.ir_version = 99
    else:
        next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 99
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError) as info:
        Engine(path)
    message = str(info.value)
    what = "IR version 99 is newer" if too_new == "ir" else "opset 99 is newer"
    assert str(path) in message and what in message and f"onnxruntime {onnxruntime.__version__}" in message
    assert "upgrade onnxruntime" in message and "segrt export" in message


def test_onnx_check_is_skipped_without_the_onnx_package(tmp_path, monkeypatch):
    """onnx is not a runtime dependency: without it the model still loads (documented fallback)."""
    path = write_external_model(tmp_path, "w.bin")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with Engine(path) as engine:
        assert engine.infer(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)
