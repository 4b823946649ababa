"""segrt runtime: runs exported SegFormers with numpy, OpenCV, ONNX Runtime and TensorRT. Never imports torch."""

from segrt.runtime.errors import SegrtError

__all__ = ["Engine", "SegrtError"]


def __getattr__(name: str):
    # Lazy so that importing segrt.runtime.errors (as export/ does) does not load ONNX Runtime.
    if name == "Engine":
        from segrt.runtime.engine import Engine

        return Engine
    raise AttributeError(name)
