"""segrt: edge inference runtime for efficient SegFormer semantic segmentation.

    from segrt import Engine
    mask = Engine("model.onnx").infer(frame)   # frame: HxWx3 uint8 BGR -> HxW uint8 labels
"""

from segrt.runtime.errors import *  # noqa: F401,F403  (the typed error hierarchy is public API)
from segrt.runtime.errors import SegrtError

__version__ = "0.1.0"
__all__ = ["Engine", "RemoteEngine", "SegrtError", "__version__"]  # noqa: F405 (Engine, RemoteEngine: lazy, below)


def __getattr__(name: str):
    if name == "Engine":
        from segrt.runtime.engine import Engine

        return Engine
    if name == "RemoteEngine":  # lazy: tritonclient is imported on first use, not with segrt
        from segrt.runtime.remote import RemoteEngine

        return RemoteEngine
    raise AttributeError(name)
