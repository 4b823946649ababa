"""The one place that imports TensorRT and cuda-python for segrt, and checks CUDA runtime results.

Both are imported lazily (the ONNX Runtime path never needs them) and every failure becomes a typed
segrt error that says what to install. ``segrt.engines`` uses these helpers too.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from segrt.runtime.errors import BackendError, BackendUnavailableError

CUDA_PYTHON_HINT = ("pip install 'cuda-python>=12.6.1,<13' on JetPack 6 / CUDA 12 (cuda.bindings exists from 12.6.1; "
                    "13.x needs CUDA 13 and driver r580+)")


def import_tensorrt() -> ModuleType:
    """The real ``tensorrt`` module. Raises BackendUnavailableError when it is missing.

    A stubs-only install (tensorrt-stubs, for type checking) makes ``import tensorrt`` succeed as an
    empty namespace package, so a successful import alone proves nothing.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError("TensorRT is not installed (on Jetson it comes with JetPack: sudo apt install "
                                      "nvidia-jetpack; on a desktop: pip install tensorrt-cu12)") from exc
    if not hasattr(trt, "Runtime") or not hasattr(trt, "__version__"):
        raise BackendUnavailableError("only TensorRT type stubs are installed, not TensorRT itself")
    return trt


def import_cudart() -> Any:
    """``cuda.bindings.runtime`` (the CUDA runtime C API), or BackendUnavailableError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(f"cuda-python (cuda.bindings) is not installed: {CUDA_PYTHON_HINT}") from exc
    return cudart


def cuda_check(result: Any, what: str, cudart: Any) -> Any:
    """Unpack a cuda.bindings ``(error, value...)`` tuple, raising BackendError on any error code.

    ``cudart`` is passed in (not imported here) so callers and tests decide which module answers."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise BackendError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def stream_handle(stream: Any) -> int:
    """The integer handle TensorRT's ``execute_async_v3`` takes, for a cuda.bindings ``cudaStream_t``.

    ``int(stream)`` is deprecated from cuda-bindings 12.9.1 / 13.0 in favour of
    ``cuda.bindings.utils.get_cuda_native_handle`` (NVIDIA/cuda-python PR #773), which older releases
    (12.6.x, JetPack 6) lack: use it where present. Plain ints pass through."""
    if isinstance(stream, int):
        return stream
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))
