"""Hostile and broken model files: refused with a typed segrt error that names the problem, before
anything unsafe happens (no external file read, no pickle code run, no engine deserialised)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from segrt.export.model.checkpoints import load_checkpoint
from segrt.runtime.engine import Engine
from segrt.runtime.errors import EngineCompatibilityError, ModelLoadError, SegrtError, UnsafeModelError
from test_engines_manifest import ENGINE_BYTES, _fake_cudart, make_engine

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
def test_broken_onnx_files_are_model_load_errors(tmp_path, b0_onnx, damage):
    data = b0_onnx.read_bytes()
    broken = {"truncated": data[: len(data) // 3], "empty": b"",
              "flipped": data[:200] + bytes(b ^ 0x5A for b in data[200:4000]) + data[4000:],
              "text": b"this is not a model\n" * 50}[damage]
    path = tmp_path / "broken.onnx"
    path.write_bytes(broken)
    with pytest.raises(ModelLoadError) as info:
        Engine(path)
    assert str(path) in str(info.value)


def test_onnx_check_is_skipped_without_the_onnx_package(tmp_path, monkeypatch):
    """onnx is not a runtime dependency: without it the model still loads (documented fallback)."""
    path = write_external_model(tmp_path, "w.bin")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with Engine(path) as engine:
        assert engine.infer(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)


# ------------------------------------------------------------------------------------------ checkpoints
class _Touch:
    """Pickles to a call of Path.touch: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_unless_trusted(tmp_path, random_b0):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": random_b0.model.state_dict(), "hook": _Touch(marker)}, path)
    with pytest.raises(UnsafeModelError, match="--trust-pickle"):
        load_checkpoint(path)
    assert not marker.exists(), "refusing must not unpickle the payload"
    loaded = load_checkpoint(path, trust_pickle=True)
    assert marker.exists()  # trusting really unpickles, payload and all: that is why it is opt-in
    for key, value in random_b0.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_tensor_only_pickle_loads_without_trust(tmp_path, random_b0):
    path = tmp_path / "weights.pth"
    torch.save({"model": random_b0.model.state_dict(), "epoch": 12, "note": "plain containers"}, path)
    loaded = load_checkpoint(path)
    key = "decode_head.classifier.weight"
    assert torch.equal(loaded.model.state_dict()[key], random_b0.model.state_dict()[key])


def test_cli_export_has_the_trust_flag(tmp_path, random_b0):
    from typer.testing import CliRunner

    from segrt.cli import app

    path = tmp_path / "model.pth"
    torch.save({"state_dict": random_b0.model.state_dict(), "hook": _Touch(tmp_path / "x")}, path)
    result = CliRunner().invoke(app, ["export", str(path), "-o", str(tmp_path / "m.onnx"), "--size", "64x64"])
    assert result.exit_code != 0 and not (tmp_path / "x").exists()
    assert isinstance(result.exception, UnsafeModelError) or "trust-pickle" in result.output
    help_text = CliRunner().invoke(app, ["export", "--help"]).output
    assert "--trust-pickle" in help_text


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoints_are_model_load_errors(tmp_path, random_b0, suffix):
    from segrt.export.model.checkpoints import save_checkpoint

    whole = tmp_path / f"whole{suffix}"
    if suffix == ".safetensors":
        save_checkpoint(random_b0.model, random_b0.metadata, whole)
    else:
        torch.save(random_b0.model.state_dict(), whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint(cut)
    assert str(cut) in str(info.value)


# ------------------------------------------------------------------------------------------ engines
def _must_not_deserialise(*args, **kwargs):
    raise AssertionError("TensorRT was asked to deserialise an engine that failed its manifest check")


@pytest.mark.parametrize("damage", ["truncated", "empty", "appended", "manifest-hash", "manifest-fields",
                                    "manifest-missing"])
def test_damaged_engines_are_refused_before_deserialising(tmp_path, monkeypatch, damage):
    from segrt.engines.manifest import manifest_path
    from segrt.runtime.backends import tensorrt as backend

    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.3.0.30"
    fake_trt.Runtime = fake_trt.Logger = _must_not_deserialise
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(backend, "_cudart", lambda: _fake_cudart(8, 7))
    engine = make_engine(tmp_path)
    manifest = manifest_path(engine)
    if damage == "truncated":
        engine.write_bytes(ENGINE_BYTES[: len(ENGINE_BYTES) // 2])
    elif damage == "empty":
        engine.write_bytes(b"")
    elif damage == "appended":
        engine.write_bytes(ENGINE_BYTES + b"\x00payload")
    elif damage == "manifest-hash":
        text = manifest.read_text()
        manifest.write_text(text.replace(text.split('"engine_sha256": "')[1][:8], "deadbeef"))
    elif damage == "manifest-fields":
        manifest.write_text('{"kind": "segrt-tensorrt-engine", "schema": 1, "inputs": []}')
    else:
        manifest.unlink()
    with pytest.raises(EngineCompatibilityError) as info:
        backend.TensorRTBackend(engine)
    assert isinstance(info.value, SegrtError) and str(info.value)
