"""`segrt doctor` on fake Jetson, desktop and driverless machines (fake /etc files under tmp_path, the CPU
stand-ins for tensorrt and cuda.bindings), and on this machine through the CLI."""

from __future__ import annotations

import sys

import pytest
from trt_standin import CpuCudart, StrictTensorRT
from typer.testing import CliRunner

from segrt.engines import system
from segrt.engines.system import diagnose, probe_system

# /etc/nv_tegra_release of JetPack 6.2 (L4T R36.4.3).
JETPACK_62 = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
              "DATE: Wed Jan  8 01:49:37 UTC 2025\n")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Build a fake machine: (tegra release text, GPUs, TensorRT version, packages) -> probe root."""
    from segrt.runtime.backends import cuda as cuda_helpers

    def make(tegra=None, gpus=((8, 7),), integrated=True, driver=12060, tensorrt="10.3.0.30", dla_cores=2,
             packages=None):
        if tegra is not None:
            (tmp_path / "etc").mkdir(exist_ok=True)
            (tmp_path / "etc" / "nv_tegra_release").write_text(tegra)
        cudart = CpuCudart(list(gpus), integrated=integrated, driver=driver)
        monkeypatch.setattr(cuda_helpers, "import_cudart", lambda: cudart)
        if tensorrt is None:
            monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like a missing package
        else:
            trt = StrictTensorRT(tensorrt)
            trt.dla_cores = dla_cores
            monkeypatch.setitem(sys.modules, "tensorrt", trt)
        versions = {"cuda-python": "12.9.4", "polygraphy": "0.49.26", "onnx": "1.17.0", **(packages or {})}
        monkeypatch.setattr(system, "package_version", lambda name: versions.get(name))
        return tmp_path

    return make


def problems(result):
    return {f.topic: f for f in result.problems}


def test_jetson_orin_on_jetpack_6_2_is_ready(machine):
    info = probe_system(machine(JETPACK_62))
    assert info.l4t == (36, 4, 3) and info.jetpack == "6.2" and info.cuda_driver == 12060
    assert info.tensorrt == "10.3.0.30" and info.dla_cores == 2 and info.gpu.compute_capability == (8, 7)
    result = diagnose(info)
    assert result.problems == [] and result.target == "jetson-orin"
    assert "TensorRT 10.3 plan" in result.plan and "FP16 builder flag" in result.plan


def test_orin_nano_and_wrong_cuda_python_are_reported_with_a_fix(machine):
    info = probe_system(machine(JETPACK_62, dla_cores=0, packages={"cuda-python": "13.0.1", "polygraphy": None}))
    result = diagnose(info)
    assert result.target == "jetson-orin-nano"
    found = problems(result)
    assert "CUDA 12" in found["cuda-python"].problem and "<13" in found["cuda-python"].fix
    assert "segrt[jetson]" in found["polygraphy"].fix


def test_old_jetpack_is_a_problem(machine):
    result = diagnose(probe_system(machine("# R35 (release), REVISION: 5.0, GCID: 1\n")))
    assert "JetPack 6.1+" in problems(result)["JetPack"].problem


def test_desktop_gpu(machine):
    info = probe_system(machine(None, gpus=((8, 9),), integrated=False, tensorrt="10.8.0.43", dla_cores=0))
    result = diagnose(info)
    assert info.jetpack is None and result.target == "desktop" and result.problems == []
    assert "TensorRT 10.8 plan" in result.plan


def test_missing_driver_and_tensorrt_are_reported_cleanly(machine):
    info = probe_system(machine(None, gpus=(), driver=0, tensorrt=None))
    result = diagnose(info)
    found = problems(result)
    assert {"TensorRT", "CUDA driver", "GPU"} <= set(found)
    assert "pip install tensorrt" in found["TensorRT"].fix and result.target is None
    assert "bundle" in result.plan


def test_doctor_command_here_exits_0():
    from segrt.cli import app

    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "TensorRT" in result.output and "segrt build here" in result.output
