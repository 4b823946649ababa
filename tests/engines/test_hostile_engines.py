"""Damaged TensorRT engines and manifests: refused before TensorRT deserialises a byte."""

from __future__ import annotations

import sys
import types

import pytest
from test_engines_manifest import ENGINE_BYTES, _fake_cudart, make_engine

from segrt.runtime.errors import EngineCompatibilityError


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
    assert engine.stem in str(info.value)  # the message names the engine or its manifest file
