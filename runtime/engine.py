"""``Engine``: frames in, label masks out, on whichever backend the model file calls for.

    engine = Engine("model.onnx")          # or a bundled name ("camvid-b0"), or "model.engine"
    mask = engine.infer(frame)             # HxWx3 uint8 BGR -> HxW uint8 labels, same H and W

Thread safety: ``infer`` and ``infer_batch`` hold no per-call state on the engine, and ONNX Runtime
sessions accept concurrent ``run`` calls, so one Engine may serve many threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segrt.runtime.backends.base import Backend
from segrt.runtime.errors import BackendUnavailableError, ModelLoadError
from segrt.runtime.frames import as_bgr
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.models import resolve
from segrt.runtime.preprocess import frames_to_input, labels_to_mask, logits_to_mask

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "onnxruntime", "ort-cuda", "ort-tensorrt", "tensorrt")


def open_backend(path: Path, backend: str, threads: int | None = None, device: int = 0) -> Backend:
    """Pick the backend from the file type (TensorRT engines) or the caller's choice."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "tensorrt" or (backend == "auto" and is_engine):
        if not is_engine:
            raise ModelLoadError(f"{path}: the tensorrt backend runs built engines (.engine); build one with `segrt build`")
        from segrt.runtime.backends.tensorrt import TensorRTBackend  # lazy: imports tensorrt and cuda-python

        return TensorRTBackend(path, device=device)
    if is_engine:
        raise ModelLoadError(f"{path}: a TensorRT engine cannot run on backend {backend!r}")
    from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    ort_device = {"auto": "cpu", "onnxruntime": "cpu", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt"}[backend]
    return OnnxRuntimeBackend(path, device=ort_device, threads=threads)


class Engine:
    def __init__(self, model: str | Path = "camvid-b0", backend: str = "auto", *, threads: int | None = None,
                 device: int = 0):
        self.path = resolve(model, "onnx")
        self.backend: Backend = open_backend(self.path, backend, threads=threads, device=device)
        self.metadata: ModelMetadata = self.backend.metadata
        self._fixed_batch = self.backend.input_shape[0]

    # ------------------------------------------------------------------ description
    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        """RGB colour per class."""
        return self.metadata.palette  # type: ignore[return-value]

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) frames are resized to, or None for models exported with dynamic sizes."""
        return self.metadata.input_size

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        return f"Engine({str(self.path)!r}, backend={self.backend_name!r}, classes={len(self.classes)}, input_size={self.input_size})"

    # ------------------------------------------------------------------ inference
    def _network_size(self, frame: np.ndarray) -> tuple[int, int]:
        return self.input_size or (frame.shape[0], frame.shape[1])

    def _masks(self, out: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        if self.metadata.output == "labels" or out.ndim == 3:
            return [labels_to_mask(o, s) for o, s in zip(out, shapes)]
        return [logits_to_mask(o, s) for o, s in zip(out, shapes)]

    def infer(self, frame: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> HxW uint8 label mask at the frame's own resolution."""
        return self.infer_batch([frame])[0]

    def infer_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several frames (any sizes) -> one mask each. Frames sharing a network size run as one batch
        where the model's batch dimension allows it."""
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            frames = list(frames)
        bgr = [as_bgr(f) for f in frames]
        if not bgr:
            return []
        masks: list[np.ndarray | None] = [None] * len(bgr)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(bgr):
            groups.setdefault(self._network_size(f), []).append(i)
        step = self._fixed_batch or len(bgr)
        for size, idx in groups.items():
            for start in range(0, len(idx), step):
                chunk = idx[start : start + step]
                x = frames_to_input([bgr[i] for i in chunk], size, self.metadata.mean, self.metadata.std)
                out = self.backend.run(x)
                for i, m in zip(chunk, self._masks(out, [bgr[i].shape[:2] for i in chunk])):
                    masks[i] = m
        return masks  # type: ignore[return-value]

    def logits(self, frame: np.ndarray) -> np.ndarray:
        """Raw network output for one frame (K, h, w), for evaluation and debugging."""
        f = as_bgr(frame)
        return self.backend.run(frames_to_input([f], self._network_size(f), self.metadata.mean, self.metadata.std))[0]

    # ------------------------------------------------------------------ streaming
    def stream(self, source, **options):
        """Masks for a camera, stream, video or image folder, with capture, inference and rendering
        overlapped in threads: ``for r in engine.stream("0"): r.frame, r.mask, r.timing``.
        ``source`` and ``options`` are those of :class:`segrt.runtime.stream.Stream`."""
        from segrt.runtime.stream import Stream  # lazy: threads and sources are not needed for single-frame inference

        return Stream(self, source, **options)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
