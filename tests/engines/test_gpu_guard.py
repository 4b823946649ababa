"""The GPU tests skip only where TensorRT or cuda-python is missing or no GPU is visible; an installed but broken
TensorRT or CUDA must fail the run loudly, not turn every GPU test into a skip."""

from __future__ import annotations

import sys
import types

import pytest
from conftest import gpu_skip_reason


def _fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.Builder = object
    return trt


def _fake_cudart(monkeypatch, get_device_count) -> None:
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    runtime = types.ModuleType("cuda.bindings.runtime")
    runtime.cudaGetDeviceCount = get_device_count
    bindings.runtime = runtime
    cuda.bindings = bindings
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)


def test_missing_tensorrt_or_stubs_only_is_a_skip_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "not installed" in gpu_skip_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs give
    assert "stubs" in gpu_skip_reason()


def test_no_visible_gpu_is_a_skip_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    _fake_cudart(monkeypatch, lambda: (100, 0))  # cudaErrorNoDevice
    assert "no CUDA GPU" in gpu_skip_reason()
    _fake_cudart(monkeypatch, lambda: (0, 1))
    assert gpu_skip_reason() is None


def test_a_broken_cuda_install_fails_instead_of_skipping(monkeypatch):
    def broken():
        raise RuntimeError("libcudart.so: undefined symbol")

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    _fake_cudart(monkeypatch, broken)
    with pytest.raises(RuntimeError, match="undefined symbol"):
        gpu_skip_reason()
