"""TensorRT versions and the GPU segrt runs on: parsed, compared, detected (lazily, never required)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from segrt.runtime.backends import cuda as cuda_helpers
from segrt.runtime.backends.cuda import cuda_check, import_tensorrt
from segrt.runtime.errors import BackendUnavailableError, ConfigError

__all__ = ["GpuInfo", "TrtVersion", "detect_gpu", "detect_tensorrt", "import_tensorrt", "matches"]


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int = 0
    patch: int = 0

    @classmethod
    def parse(cls, text: str | TrtVersion) -> TrtVersion:
        """``10.3``, ``10.3.0.30``, ``11`` -> TrtVersion (build numbers are dropped: they never change the API)."""
        if isinstance(text, TrtVersion):
            return text
        match = re.fullmatch(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.\d+)*\s*", str(text))
        if not match:
            raise ConfigError(f"bad TensorRT version {text!r}; expected MAJOR[.MINOR[.PATCH]] such as 10.3")
        return cls(*(int(g) if g is not None else 0 for g in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}" + (f".{self.patch}" if self.patch else "")

    # What each release can do (operators, parser behaviour, API members) is in segrt.engines.trt_table.


def matches(wanted: str, running: TrtVersion) -> bool:
    """A target's ``10.3`` matches 10.3.x; ``11`` matches any 11.x."""
    spec = wanted.split(".")
    want = TrtVersion.parse(wanted)
    if len(spec) == 1:
        return running.major == want.major
    return (running.major, running.minor) == (want.major, want.minor)


def detect_tensorrt() -> TrtVersion | None:
    """The installed TensorRT Python bindings' version, or None when TensorRT is not installed."""
    try:
        trt = import_tensorrt()
    except BackendUnavailableError:
        return None
    return TrtVersion.parse(trt.__version__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_mb: int
    integrated: bool  # Jetson (shared CPU/GPU memory)

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


def _check(err: object, what: str, cudart: object) -> None:
    cuda_check((err,), what, cudart)


def detect_gpu(index: int = 0) -> GpuInfo | None:
    """The CUDA device ``index`` through the CUDA runtime API (cuda-python), or None without a usable GPU."""
    try:
        cudart = cuda_helpers.import_cudart()
    except BackendUnavailableError:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
    except (RuntimeError, OSError):  # no driver library at all
        return None
    if err != cudart.cudaError_t.cudaSuccess or count <= index:
        return None
    err, prop = cudart.cudaGetDeviceProperties(index)
    _check(err, f"cudaGetDeviceProperties({index})", cudart)
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(index=index, name=name.rstrip("\x00"), compute_capability=(int(prop.major), int(prop.minor)),
                   total_memory_mb=int(prop.totalGlobalMem) >> 20, integrated=bool(prop.integrated))
