"""What this machine can do for segrt's TensorRT path, and what `segrt build` would do on it (`segrt doctor`).

Two halves: :func:`probe_system` reads the machine (files under ``root``, installed packages, TensorRT and
the CUDA runtime through the lazy helpers), and :func:`diagnose` turns that pure data into findings, each
problem with its fix. Tests feed fake system files and stand-in modules to the first half and plain data
to the second.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from segrt.engines.targets import TARGETS
from segrt.engines.trt_table import api_available, jetson_supported
from segrt.engines.versions import GpuInfo, TrtVersion, detect_gpu
from segrt.runtime.backends import cuda as cuda_helpers
from segrt.runtime.errors import BackendError, BackendUnavailableError

TEGRA_RELEASE = Path("etc/nv_tegra_release")
# L4T release -> JetPack (NVIDIA's JetPack archive): R36.4.3 is JetPack 6.2, R36.4.0 6.1, R36.3 6.0.
_JETPACK = {(36, 4, 3): "6.2", (36, 4, 4): "6.2.1", (36, 4, 0): "6.1", (36, 3, 0): "6.0"}
POLYGRAPHY_RANGE = ((0, 49), (0, 54))  # the device extras' range: CompareFunc.simple exists throughout


@dataclass
class SystemInfo:
    machine: str = ""
    l4t: tuple[int, int, int] | None = None  # Jetson Linux release from /etc/nv_tegra_release
    tensorrt: str | None = None
    tensorrt_error: str = ""
    cuda_python: str | None = None
    cuda_bindings: bool = False  # the cuda.bindings layout (cuda-python >= 12.6.1)
    cuda_driver: int | None = None  # e.g. 12060 for CUDA 12.6
    cuda_runtime: int | None = None
    gpu: GpuInfo | None = None
    gpu_error: str = ""
    dla_cores: int | None = None
    polygraphy: str | None = None
    onnx: str | None = None

    @property
    def jetpack(self) -> str | None:
        if self.l4t is None:
            return None
        exact = _JETPACK.get(self.l4t)
        if exact:
            return exact
        return {35: "5.x", 36: "6.x", 38: "7.x"}.get(self.l4t[0], f"unknown (L4T R{self.l4t[0]})")


@dataclass
class Finding:
    topic: str
    value: str
    problem: str = ""
    fix: str = ""


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    target: str | None = None
    plan: str = ""

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.problem]


# ---------------------------------------------------------------------------------------------- probing
def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_l4t(root: Path) -> tuple[int, int, int] | None:
    """``# R36 (release), REVISION: 4.3, GCID: ...`` -> (36, 4, 3)."""
    path = root / TEGRA_RELEASE
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def _cuda_versions(info: SystemInfo) -> None:
    try:
        cudart = cuda_helpers.import_cudart()
    except BackendUnavailableError:
        return
    info.cuda_bindings = True
    for attr, call in (("cuda_driver", "cudaDriverGetVersion"), ("cuda_runtime", "cudaRuntimeGetVersion")):
        try:
            value = cuda_helpers.cuda_check(getattr(cudart, call)(), call, cudart)
        except (BackendError, RuntimeError, OSError, AttributeError):
            continue
        setattr(info, attr, int(value) if value else None)  # the driver version is 0 without a driver


def probe_system(root: Path = Path("/")) -> SystemInfo:
    info = SystemInfo(machine=platform.machine(), l4t=read_l4t(root), cuda_python=package_version("cuda-python"),
                      polygraphy=package_version("polygraphy"), onnx=package_version("onnx"))
    _cuda_versions(info)
    try:
        info.gpu = detect_gpu(0)
        if info.gpu is None:
            info.gpu_error = "no CUDA GPU visible to cuda-python"
    except BackendError as exc:
        info.gpu_error = str(exc)
    try:
        trt = cuda_helpers.import_tensorrt()
        info.tensorrt = str(trt.__version__)
        if info.gpu is not None:
            info.dla_cores = int(trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores)
    except BackendUnavailableError as exc:
        info.tensorrt_error = str(exc)
    return info


# ---------------------------------------------------------------------------------------------- diagnosis
def pick_target(info: SystemInfo) -> str | None:
    """The `segrt build --target` for this machine, or None when there is no GPU to build on."""
    gpu = info.gpu
    if gpu is None:
        return None
    if not gpu.integrated:
        return "desktop"
    if gpu.compute_capability == TARGETS["jetson-thor"].compute_capability:
        return "jetson-thor"
    if gpu.compute_capability == (8, 7):
        if info.l4t is not None and info.l4t[0] >= 38:
            return "jetson-orin-jp7"
        return "jetson-orin" if (info.dla_cores or 0) > 0 else "jetson-orin-nano"
    return None


def _cuda_text(version: int | None) -> str:
    return f"{version // 1000}.{version % 1000 // 10}" if version else "none"


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def diagnose(info: SystemInfo) -> Diagnosis:
    d = Diagnosis()
    jetson = info.l4t is not None
    add = d.findings.append

    if jetson:
        jp = info.jetpack or ""
        problem = "" if info.l4t and info.l4t[0] >= 36 and (info.l4t[0], info.l4t[1]) >= (36, 4) else (
            f"JetPack {jp} ships TensorRT older than 10.3; segrt's Jetson targets need JetPack 6.1+")
        add(Finding("JetPack", f"{jp} (L4T R{'.'.join(map(str, info.l4t or ()))})", problem,
                    "flash JetPack 6.2 (SDK Manager) or 7.x" if problem else ""))
    else:
        add(Finding("JetPack", "not a Jetson (no /etc/nv_tegra_release)"))

    if info.tensorrt:
        add(Finding("TensorRT", info.tensorrt))
    else:
        fix = ("sudo apt install nvidia-jetpack (brings TensorRT and python3-libnvinfer), and make the venv with "
               "--system-site-packages so it sees them") if jetson else "pip install tensorrt-cu12 (or tensorrt-cu13)"
        add(Finding("TensorRT", "not installed", info.tensorrt_error or "TensorRT is not importable", fix))

    driver_major = info.cuda_driver // 1000 if info.cuda_driver else None
    add(Finding("CUDA driver", _cuda_text(info.cuda_driver),
                "" if info.cuda_driver else "no NVIDIA driver found (libcuda)",
                "" if info.cuda_driver else ("reflash / update JetPack" if jetson
                                             else "install the NVIDIA driver (r525+ for CUDA 12)")))
    add(Finding("CUDA runtime (cuda-python)", _cuda_text(info.cuda_runtime)))

    cp_major = _major(info.cuda_python)
    extra = "jetson7" if jetson and info.l4t and info.l4t[0] >= 38 else "jetson" if jetson else "desktop"
    if info.cuda_python is None or not info.cuda_bindings:
        add(Finding("cuda-python", info.cuda_python or "not installed",
                    "cuda.bindings is missing (cuda-python < 12.6.1 or not installed)",
                    f"pip install 'segrt[{extra}]'"))
    elif driver_major is not None and cp_major is not None and cp_major > driver_major:
        add(Finding("cuda-python", info.cuda_python,
                    f"cuda-python {cp_major}.x needs a CUDA {cp_major} driver; this one is CUDA {driver_major}",
                    f"pip install 'cuda-python>=12.6.1,<{driver_major + 1}' (or 'segrt[{extra}]')"))
    else:
        add(Finding("cuda-python", info.cuda_python))

    poly = tuple(int(p) for p in re.findall(r"\d+", info.polygraphy or "")[:2])
    poly_ok = info.polygraphy is not None and POLYGRAPHY_RANGE[0] <= poly < POLYGRAPHY_RANGE[1]
    add(Finding("polygraphy", info.polygraphy or "not installed",
                "" if poly_ok else "segrt verify needs polygraphy >=0.49,<0.54", "" if poly_ok else
                f"pip install 'segrt[{extra}]'"))
    add(Finding("onnx", info.onnx or "not installed",
                "" if info.onnx else "segrt build --from-plan / --adopt / verify read the ONNX with it",
                "" if info.onnx else f"pip install 'segrt[{extra}]'"))

    if info.gpu is not None:
        gpu = info.gpu
        add(Finding("GPU", f"{gpu.name}, compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
                    f" ({gpu.sm}){', integrated' if gpu.integrated else ''}, {gpu.total_memory_mb} MB"))
    else:
        add(Finding("GPU", "none", info.gpu_error or "no CUDA GPU visible",
                    "run segrt build on the device; here it writes a bundle to build there"))
    add(Finding("DLA cores", "unknown (needs TensorRT and the GPU)" if info.dla_cores is None else str(info.dla_cores)))

    d.target = pick_target(info)
    if d.target is None:
        d.plan = "no engine here: `segrt build MODEL --target T` writes a bundle; build it on the device"
    else:
        target = TARGETS[d.target]
        running = TrtVersion.parse(info.tensorrt) if info.tensorrt else None
        if running is None:
            d.plan = f"target {d.target}: install TensorRT to build here"
        elif target.jetson and not jetson_supported(running):
            d.plan = f"target {d.target}: TensorRT {running} does not support JetPack"
            add(Finding("TensorRT for Jetson", str(running), d.plan, "use the TensorRT that JetPack installs"))
        else:
            typed = ("weakly typed: FP16 builder flag, LayerNorm/Softmax/Reduce pinned to FP32"
                     if api_available("BuilderFlag.FP16", running) else "strongly typed from an FP16 ONNX")
            wanted = " or ".join(target.tensorrt)
            expected = "" if target.expects(running) else f" (the target expects TensorRT {wanted})"
            d.plan = (f"target {d.target}: TensorRT {running} plan, {target.default_precision} {typed}, "
                      f"workspace {target.workspace_mb} MB{expected}")
    return d
