"""TensorRT versions and the GPU segrt runs on: parsed, compared, detected (lazily, never required)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from segrt.runtime.errors import BackendError, BackendUnavailableError, ConfigError


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

    # Capabilities that change the way an engine is built. One place, so plan and checker agree.
    @property
    def has_precision_flags(self) -> bool:
        """TensorRT 11 removed the FP16/INT8 builder flags: every network is strongly typed."""
        return self.major < 11

    @property
    def parses_local_functions(self) -> bool:
        return self.major >= 9

    @property
    def prefers_plugins_over_functions(self) -> bool:
        """Since 10.7 a registered plugin named like a local function wins over the function body."""
        return (self.major, self.minor) >= (10, 7)

    @property
    def max_opset(self) -> int:
        """Highest default-domain opset the ONNX parser documents (operators.md of each release)."""
        return 24 if (self.major, self.minor) >= (10, 15) else 20


def matches(wanted: str, running: TrtVersion) -> bool:
    """A target's ``10.3`` matches 10.3.x; ``11`` matches any 11.x."""
    spec = wanted.split(".")
    want = TrtVersion.parse(wanted)
    if len(spec) == 1:
        return running.major == want.major
    return (running.major, running.minor) == (want.major, want.minor)


def import_tensorrt() -> ModuleType:
    """The real ``tensorrt`` module. Raises BackendUnavailableError when it is missing.

    A stubs-only install (tensorrt-stubs, for type checking) makes ``import tensorrt`` succeed as an
    empty namespace package, so a successful import alone proves nothing.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError("TensorRT is not installed (on Jetson it comes with JetPack; "
                                      "on a desktop: pip install tensorrt)") from exc
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        raise BackendUnavailableError("only TensorRT type stubs are installed, not TensorRT itself")
    return trt


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


def _check(err: object, what: str) -> None:
    from cuda.bindings import runtime as cudart

    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise BackendError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")


def detect_gpu(index: int = 0) -> GpuInfo | None:
    """The CUDA device ``index`` through the CUDA runtime API (cuda-python), or None without a usable GPU."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
    except (RuntimeError, OSError):  # no driver library at all
        return None
    if err != cudart.cudaError_t.cudaSuccess or count <= index:
        return None
    err, prop = cudart.cudaGetDeviceProperties(index)
    _check(err, f"cudaGetDeviceProperties({index})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(index=index, name=name.rstrip("\x00"), compute_capability=(int(prop.major), int(prop.minor)),
                   total_memory_mb=int(prop.totalGlobalMem) >> 20, integrated=bool(prop.integrated))
