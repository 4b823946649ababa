"""Engine manifests: written next to the engine, checked before anything is deserialised."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from segrt.engines.manifest import (
    Manifest,
    TensorSpec,
    load_checked_engine,
    manifest_path,
    read_manifest,
    sha256_bytes,
    write_manifest,
)
from segrt.runtime.errors import EngineCompatibilityError, SegrtError

# Stand-in engine bytes: the checks are about the file and its manifest, never about TensorRT's content.
ENGINE_BYTES = bytes(range(256)) * 64


def make_engine(tmp_path: Path, **overrides) -> Path:
    engine = tmp_path / "model.jetson-orin.fp16.engine"
    engine.write_bytes(ENGINE_BYTES)
    fields = {"engine_file": engine.name, "engine_sha256": sha256_bytes(ENGINE_BYTES), "tensorrt_version": "10.3.0.30",
              "target": "jetson-orin", "compute_capability": [8, 7], "gpu_name": "Orin", "precision": "fp16",
              "inputs": [TensorSpec("pixel_values", [1, 3, 512, 512], "float32")],
              "outputs": [TensorSpec("output", [1, 11, 128, 128], "float32")],
              "metadata": {"classes": [f"c{i}" for i in range(11)], "input_size": [512, 512]}}
    fields.update(overrides)
    write_manifest(Manifest(**fields), engine)
    return engine


def test_round_trip(tmp_path):
    engine = make_engine(tmp_path)
    assert manifest_path(engine).name == engine.name + ".json"
    manifest = read_manifest(engine)
    assert manifest.inputs[0].shape == [1, 3, 512, 512] and manifest.metadata["classes"][0] == "c0"
    loaded, data = load_checked_engine(engine, "10.3.0.30", (8, 7))
    assert data == ENGINE_BYTES and loaded == manifest


def test_tampered_engine_is_refused(tmp_path):
    engine = make_engine(tmp_path)
    data = bytearray(ENGINE_BYTES)
    data[100] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(EngineCompatibilityError, match="modified or corrupted"):
        load_checked_engine(engine, "10.3.0.30", (8, 7))
    engine.write_bytes(ENGINE_BYTES[:-10])  # truncated copy
    with pytest.raises(EngineCompatibilityError, match="sha256"):
        load_checked_engine(engine, "10.3.0.30", (8, 7))


def test_version_and_gpu_mismatches(tmp_path):
    engine = make_engine(tmp_path)
    with pytest.raises(EngineCompatibilityError, match="built with TensorRT 10.3.0.30 but this machine runs 10.16.1"):
        load_checked_engine(engine, "10.16.1", (8, 7))
    with pytest.raises(EngineCompatibilityError, match="compute capability 8.7.*this GPU is 11.0"):
        load_checked_engine(engine, "10.3.0.30", (11, 0))
    load_checked_engine(engine, "10.3.0.31", (8, 7))  # another build number of the same release is the same version


def test_version_and_hardware_compatible_engines(tmp_path):
    engine = make_engine(tmp_path, version_compatible=True, hardware_compatibility="ampere_plus",
                         compute_capability=[8, 6], target="desktop-ampere-plus")
    load_checked_engine(engine, "10.8.0", (8, 9))
    with pytest.raises(EngineCompatibilityError, match="within major version 10"):
        load_checked_engine(engine, "11.0.0", (8, 9))
    with pytest.raises(EngineCompatibilityError, match="within major version 10"):
        load_checked_engine(engine, "10.2.0", (8, 9))
    with pytest.raises(EngineCompatibilityError, match="Ampere"):
        load_checked_engine(engine, "10.8.0", (7, 5))


def test_missing_or_foreign_manifest(tmp_path):
    engine = tmp_path / "bare.engine"
    engine.write_bytes(ENGINE_BYTES)
    with pytest.raises(EngineCompatibilityError, match="no manifest"):
        load_checked_engine(engine, "10.3.0", (8, 7))
    manifest_path(engine).write_text('{"kind": "something-else"}')
    with pytest.raises(EngineCompatibilityError, match="not a segrt engine manifest"):
        read_manifest(engine)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(EngineCompatibilityError, match="not valid JSON"):
        read_manifest(engine)
    other = make_engine(tmp_path)
    renamed = tmp_path / "renamed.engine"
    renamed.write_bytes(ENGINE_BYTES)
    manifest_path(renamed).write_text(manifest_path(other).read_text())
    with pytest.raises(EngineCompatibilityError, match="describes"):
        load_checked_engine(renamed, "10.3.0.30", (8, 7))


def _fake_cudart(major: int, minor: int) -> types.SimpleNamespace:
    ok = "cudaSuccess"
    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=ok),
        cudaGetErrorName=lambda err: (ok, str(err).encode()),
        cudaGetDeviceCount=lambda: (ok, 1),
        cudaSetDevice=lambda device: (ok,),
        cudaGetDeviceProperties=lambda device: (ok, types.SimpleNamespace(major=major, minor=minor)),
    )


def test_backend_refuses_before_tensorrt_deserialises(tmp_path, monkeypatch):
    """TensorRTBackend checks the manifest first: a test double of the tensorrt module fails the test if
    the backend ever creates a Runtime (i.e. would deserialise) for a tampered or mismatched engine."""
    from segrt.runtime.backends import tensorrt as backend

    def must_not_deserialise(*args, **kwargs):
        raise AssertionError("TensorRT was asked to deserialise an engine that failed its manifest check")

    fake_trt = types.ModuleType("tensorrt")
    fake_trt.__version__ = "10.3.0.30"
    fake_trt.Runtime = must_not_deserialise
    fake_trt.Logger = must_not_deserialise
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(backend, "_cudart", lambda: _fake_cudart(8, 7))

    engine = make_engine(tmp_path)
    engine.write_bytes(ENGINE_BYTES[::-1])  # swapped content
    with pytest.raises(EngineCompatibilityError, match="refusing to deserialise"):
        backend.TensorRTBackend(engine)

    engine.write_bytes(ENGINE_BYTES)
    monkeypatch.setattr(backend, "_cudart", lambda: _fake_cudart(11, 0))  # a Thor opening an Orin engine
    with pytest.raises(EngineCompatibilityError, match="rebuild it on this device"):
        backend.TensorRTBackend(engine)


def test_engine_without_tensorrt_is_a_clear_segrt_error(tmp_path):
    from segrt.engines.versions import detect_tensorrt
    from segrt.runtime.engine import Engine

    if detect_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    engine = make_engine(tmp_path)
    with pytest.raises(SegrtError, match="TensorRT"):
        Engine(engine)
