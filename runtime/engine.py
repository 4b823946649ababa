"""``Engine``: frames in, label masks out, on whichever backend the model file calls for.

    engine = Engine("model.onnx")          # or a bundled name ("camvid-b0"), or "model.engine"
    mask = engine.infer(frame)             # HxWx3 uint8 BGR -> HxW labels, same H and W
                                           # (uint8 up to 256 classes, uint16 above)

Every argument is checked on entry: a wrong type, range or frame raises a typed SegrtError naming it
(:mod:`segrt.runtime.arguments`, :mod:`segrt.runtime.frames`).

Two model forms (the metadata's ``form``): a ``tensor`` model takes float32 (N, 3, H, W) and the Engine
resizes, normalises, upsamples and takes the argmax around it in numpy/OpenCV; a ``frame`` model does all of
that inside its graph, so the Engine only checks the frames, stacks those of one size as one uint8 batch and
returns the graph's masks (at the frame's size, or ceil(H / s) x ceil(W / s) with output stride s).

Thread safety: ``infer`` and ``infer_batch`` hold no per-call state on the engine, and ONNX Runtime
sessions accept concurrent ``run`` calls, so one Engine may serve many threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segrt.runtime.arguments import check_bool, check_choice, check_int, describe
from segrt.runtime.backends.base import Backend
from segrt.runtime.errors import BackendError, BackendUnavailableError, ConfigError, InputError, ModelLoadError
from segrt.runtime.frames import as_bgr, frame_size
from segrt.runtime.metadata import ModelMetadata, mask_size
from segrt.runtime.models import resolve
from segrt.runtime.preprocess import frames_to_input, labels_to_mask, logits_to_mask, mask_dtype

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "onnxruntime", "ort-cuda", "ort-tensorrt", "tensorrt")
MAX_THREADS = 1024
MAX_DEVICE = 1023
# Float32 values of network input per backend call: a long list of frames for a model with a dynamic
# batch runs in chunks of this size instead of as one huge tensor. Frame-form models take uint8 frames,
# so their chunks are bounded by the same number of bytes (4 * MAX_BATCH_VALUES), not values.
MAX_BATCH_VALUES = 1 << 25
MAX_BATCH_BYTES = 4 * MAX_BATCH_VALUES


def open_backend(path: Path, backend: str, threads: int | None = None, device: int = 0,
                 cuda_graph: bool = False) -> Backend:
    """Pick the backend from the file type (TensorRT engines) or the caller's choice."""
    check_choice(backend, "backend", BACKENDS, error=BackendUnavailableError)
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "tensorrt" or (backend == "auto" and is_engine):
        if not is_engine:
            raise ModelLoadError(f"{path}: the tensorrt backend runs built engines (.engine); "
                                 "build one with `segrt build`")
        from segrt.runtime.backends.tensorrt import TensorRTBackend  # lazy: imports tensorrt and cuda-python

        return TensorRTBackend(path, device=device, cuda_graph=cuda_graph)  # graph replay: TensorRT only
    if is_engine:
        raise ModelLoadError(f"{path}: a TensorRT engine cannot run on backend {backend!r}")
    from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    ort_device = {"auto": "cpu", "onnxruntime": "cpu", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt"}[backend]
    return OnnxRuntimeBackend(path, device=ort_device, threads=threads)


# Keyword options of Engine.stream, those of Stream after (engine, source): checked here so that a misspelt
# option is a ConfigError naming it, not a TypeError from the call.
STREAM_OPTIONS = frozenset({"policy", "render", "queue_size", "reconnect", "max_frames", "read_timeout",
                            "stop_timeout"})


class Engine:
    def __init__(self, model: str | Path = "camvid-b0", backend: str = "auto", *, threads: int | None = None,
                 device: int = 0, cuda_graph: bool = False):
        # Arguments first, so a wrong one is reported as itself and not as a model that failed to load.
        check_choice(backend, "backend", BACKENDS, error=BackendUnavailableError)
        threads = check_int(threads, "threads", minimum=0, maximum=MAX_THREADS, optional=True)  # 0: ORT default
        device = check_int(device, "device", minimum=0, maximum=MAX_DEVICE)  # type: ignore[assignment]
        check_bool(cuda_graph, "cuda_graph")
        self.path = resolve(model, "onnx")
        self.backend: Backend = open_backend(self.path, backend, threads=threads, device=device,
                                             cuda_graph=cuda_graph)
        self.metadata: ModelMetadata = self.backend.metadata
        self._fixed_batch = self.backend.input_shape[0]
        self._mask_dtype = mask_dtype(len(self.metadata.classes))

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
    def mask_dtype(self) -> type[np.unsignedinteger]:
        """dtype of the masks: uint8 for up to 256 classes, uint16 above."""
        return self._mask_dtype

    @property
    def form(self) -> str:
        """"tensor" (numpy/OpenCV pre and post around a float32 network) or "frame" (frame in, mask out in-graph)."""
        return self.metadata.form

    @property
    def output_stride(self) -> int:
        """Masks are ceil(H / s) x ceil(W / s) for an HxW frame (1: the frame's size; frame-form models only)."""
        return self.metadata.output_stride

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) every frame must have (a frame-form model exported for one camera size), or None: any size."""
        return self.metadata.frame_size

    def mask_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the mask :meth:`infer` returns for a frame of ``frame_hw`` (H, W)."""
        if not isinstance(frame_hw, (tuple, list)) or len(frame_hw) != 2:
            raise InputError(f"frame_hw must be a (height, width) pair, got {describe(frame_hw)}")
        h = check_int(frame_hw[0], "frame_hw height", minimum=1, error=InputError)
        w = check_int(frame_hw[1], "frame_hw width", minimum=1, error=InputError)
        return mask_size((h, w), self.output_stride)  # type: ignore[arg-type]

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        return (f"Engine({str(self.path)!r}, backend={self.backend_name!r}, classes={len(self.classes)}, "
                f"input_size={self.input_size}, form={self.form!r})")

    # ------------------------------------------------------------------ inference
    def _network_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        return self.input_size or frame_hw

    def _run(self, x: np.ndarray, what: str) -> np.ndarray:
        """The backend's output for batch ``x``, checked to hold one result per frame."""
        return self._checked(self.backend.run(x), x, what)

    def _checked(self, out: Any, x: np.ndarray, what: str) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.ndim not in (3, 4) or out.shape[0] != x.shape[0]:
            shape = getattr(out, "shape", None)
            got = describe(out) if shape is None else f"shape {shape}"
            raise BackendError(f"{self.backend_name} returned {got} for {what} (a batch of {x.shape[0]}); "
                               "expected (N, K, h, w) logits or (N, h, w) labels")
        return out

    def _masks(self, out: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        if self.metadata.output == "labels" or out.ndim == 3:
            return [labels_to_mask(o, s, self._mask_dtype, len(self.classes)) for o, s in zip(out, shapes, strict=True)]
        return [logits_to_mask(o, s, self._mask_dtype) for o, s in zip(out, shapes, strict=True)]

    def infer(self, frame: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> HxW label mask at the frame's own resolution (see :attr:`mask_dtype`; a
        frame-form model exported with an output stride s returns :meth:`mask_size`, ceil(H / s) x ceil(W / s))."""
        frame_size(frame, "frame")  # named "frame", not "frames[0]", in the error
        return self.infer_batch([frame])[0]

    def infer_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several frames (any sizes) -> one mask each. Frames sharing a network size (frame form: sharing their
        own size) run as one batch where the model's batch dimension allows it.

        ``frames`` is a list or tuple of frames, or an NxHxWxC uint8 array. One HxWx3 array is refused
        (it would read as H frames of shape Wx3): use :meth:`infer`. Every frame is checked before any
        runs, so a bad frame anywhere raises InputError naming its index and nothing is computed.
        """
        items = _frame_list(frames)
        sizes = [frame_size(f, f"frames[{i}]")[:2] for i, f in enumerate(items)]
        if self.form == "frame":
            self._check_frame_size(sizes)
        masks: list[np.ndarray | None] = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):  # a frame model's batch shares the frames' size, a tensor model's the network's
            groups.setdefault(hw if self.form == "frame" else self._network_size(hw), []).append(i)
        for size, idx in groups.items():
            chunks = self._chunks(idx, max(1, self._batch_limit(size)))
            inputs = [self._input([items[i] for i in chunk], chunk, size) for chunk in chunks]
            for chunk, out in zip(chunks, self._run_chunks(inputs, chunks), strict=True):
                for i, m in zip(chunk, self._chunk_masks(out, [sizes[i] for i in chunk]), strict=True):
                    masks[i] = m
        return masks  # type: ignore[return-value]

    def _batch_limit(self, size: tuple[int, int]) -> int:
        """Frames per backend call at ``size``: float32 values of network input, or bytes of uint8 frames."""
        return (MAX_BATCH_BYTES if self.form == "frame" else MAX_BATCH_VALUES) // (3 * size[0] * size[1])

    def _input(self, frames: list, indices: list[int], size: tuple[int, int]) -> np.ndarray:
        if self.form == "frame":  # the graph resizes and normalises: one uint8 batch of the frames as they are
            return _stack_frames(frames, indices, *size)
        bgr = [as_bgr(f, f"frames[{i}]") for f, i in zip(frames, indices, strict=True)]
        return frames_to_input(bgr, size, self.metadata.mean, self.metadata.std)

    def _chunk_masks(self, out: np.ndarray, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        if self.form != "frame":
            return self._masks(out, shapes)
        # One independent array per frame: a caller writing into one mask cannot touch another's.
        return [out[0]] if len(out) == 1 else [m.copy() for m in out]

    def _chunks(self, idx: list[int], limit: int) -> list[list[int]]:
        """Frame indices in the batches the backend runs: the model's fixed batch, else split over the
        backend's concurrent lanes (CPU cores), each at most ``limit`` frames."""
        lanes = getattr(self.backend, "lanes", 1)
        step = self._fixed_batch or max(1, min(limit, -(-len(idx) // lanes)))
        return [idx[start : start + step] for start in range(0, len(idx), step)]

    def _run_chunks(self, inputs: list[np.ndarray], chunks: list[list[int]]) -> list[np.ndarray]:
        run_many = getattr(self.backend, "run_many", None)
        if run_many is None or len(inputs) < 2:
            return [self._run(x, f"frames {c[0]}..{c[-1]}") for x, c in zip(inputs, chunks, strict=True)]
        outs = run_many(inputs)
        return [self._checked(out, x, f"frames {c[0]}..{c[-1]}")
                for out, x, c in zip(outs, inputs, chunks, strict=True)]

    def _check_frame_size(self, sizes: list[tuple[int, int]]) -> None:
        """A frame-form model exported for one camera size takes frames of that size only."""
        fixed = self.metadata.frame_size
        for i, hw in enumerate(sizes if fixed is not None else []):
            if hw != fixed:
                name = "frame" if len(sizes) == 1 else f"frames[{i}]"
                raise InputError(f"{name} is {hw[1]}x{hw[0]} (WxH) but this model was exported for "
                                 f"{fixed[1]}x{fixed[0]} frames only; resize the frame, or export the model for "
                                 "any frame size (`segrt export --form frame` without a fixed frame size)")

    def logits(self, frame: np.ndarray) -> np.ndarray:
        """Raw network output for one frame (K, h, w), for evaluation and debugging (tensor-form models)."""
        if self.form == "frame":
            raise ConfigError(f"{self.path.name} is a frame-form model: its graph returns masks, not logits; "
                              "export the model with `segrt export --form logits` for its logits")
        f = as_bgr(frame, "frame")
        x = frames_to_input([f], self._network_size(f.shape[:2]), self.metadata.mean, self.metadata.std)
        return self._run(x, "frame")[0]

    # ------------------------------------------------------------------ streaming
    def stream(self, source, **options):
        """Masks for a camera, stream, video or image folder, with capture, inference and rendering
        overlapped in threads: ``for r in engine.stream("0"): r.frame, r.mask, r.timing``.
        ``source`` and ``options`` are those of :class:`segrt.runtime.stream.Stream`. A list or tuple of
        sources gives a :class:`segrt.runtime.multistream.MultiStream`: one batched inference per tick over
        the cameras, results tagged with ``r.camera``."""
        from segrt.runtime.stream import Stream  # lazy: threads and sources are not needed for single-frame inference

        unknown = sorted(set(options) - STREAM_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown stream option(s) {', '.join(map(repr, unknown))}; expected some of "
                              f"{', '.join(sorted(STREAM_OPTIONS))}")
        if isinstance(source, (list, tuple)):
            from segrt.runtime.multistream import MultiStream

            return MultiStream(self, source, **options)
        return Stream(self, source, **options)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stack_frames(frames: list, indices: list[int], h: int, w: int) -> np.ndarray:
    """Checked frames of one size as one C-contiguous uint8 (N, H, W, 3) BGR batch, copied once (a single
    contiguous BGR frame is not copied at all: backends only read their input)."""
    if len(frames) == 1 and frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].flags.c_contiguous:
        return frames[0][None]
    batch = np.empty((len(frames), h, w, 3), np.uint8)
    for j, (frame, i) in enumerate(zip(frames, indices, strict=True)):
        if frame.ndim == 3 and frame.shape[2] == 3:
            np.copyto(batch[j], frame)  # any strides; the one copy
        else:
            batch[j] = as_bgr(frame, f"frames[{i}]")  # grey or BGRA: converted, then copied
    return batch


def _frame_list(frames: object) -> list:
    """The frames of an infer_batch call as a list; InputError naming ``frames`` for anything else."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 4:
            return list(frames)
        hint = " (one frame: use infer(frame) or infer_batch([frame]))" if frames.ndim in (2, 3) else ""
        raise InputError(f"frames is a single array of shape {frames.shape}{hint}; infer_batch takes a list or "
                         "tuple of frames, or an NxHxWxC uint8 array")
    if isinstance(frames, (list, tuple)):
        return list(frames)
    raise InputError(f"frames must be a list or tuple of frames (or an NxHxWxC uint8 array), got {describe(frames)}")
