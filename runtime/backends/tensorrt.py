"""TensorRT backend: runs a serialized engine built by `segrt build`, through the CUDA runtime C API.

Memory and streams go through cuda-python's ``cuda.bindings.runtime`` (no torch, no pycuda): one
non-blocking stream per engine, page-locked (pinned) host buffers so copies are truly asynchronous,
device buffers reused while the input shapes fit them, and optionally the whole copy-in / enqueue /
copy-out sequence captured once as a CUDA graph and replayed per frame (saves launch overhead, which
matters on Jetson CPUs).

Before TensorRT sees a single byte, the JSON manifest next to the engine is checked against the
running TensorRT version and the GPU's compute capability, and the engine's sha256 against the
manifest (:mod:`segrt.runtime.backends.engine_manifest`); the bytes that were hashed are the bytes
deserialised.

Thread safety: one execution context and one set of buffers per backend, so ``run`` is serialised by
a lock; open one Engine per thread for parallel inference on one GPU. The CUDA current device is a
per-host-thread setting, so every ``run`` selects the backend's device in the calling thread.

Batches larger than the engine's optimization profile allows (``segrt build --max-batch N``) are run
in chunks of the profile's maximum batch, so ``Engine.infer_batch`` never exceeds the profile.

Frame-form engines (metadata ``form`` "frame": uint8 (N, H, W, 3) frames in, (N, Hm, Wm) masks out) copy
only uint8 in and the mask out: the pinned and device buffers are allocated once at load for the
profile's largest shape (within :data:`PINNED_BUDGET`; beyond it they grow with the shapes seen), a new
frame size only rebinds them (and recaptures the CUDA graph, which then covers the whole frame-to-mask
execution), and an int32 mask (TensorRT has no UINT16) comes back as uint16.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segrt.runtime.backends import cuda as cuda_helpers
from segrt.runtime.backends.cuda import cuda_check, import_tensorrt, stream_handle
from segrt.runtime.backends.engine_manifest import load_checked_engine, plugin_load_error
from segrt.runtime.errors import BackendError, BackendUnavailableError, InputError, ModelLoadError
from segrt.runtime.metadata import ModelMetadata, check_against_io, check_output, mask_size

if TYPE_CHECKING:
    import tensorrt as trt


def _cudart() -> Any:
    """cuda.bindings.runtime, looked up on each use so tests can substitute a CPU stand-in."""
    return cuda_helpers.import_cudart()


def _cuda(result: Any, what: str) -> Any:
    """Unpack a cuda.bindings ``(error, value...)`` tuple, raising BackendError on any error code."""
    return cuda_check(result, what, _cudart())


# TensorRT I/O types by DataType member name (the names are the same in TensorRT 10 and 11); a type not listed
# (BF16, FP8, INT4, ...) is refused at load instead of being read as bytes of another type.
TRT_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
             "BOOL": np.bool_, "UINT8": np.uint8}
# Pinned host memory reserved up front for a frame-form engine's largest profile shape (input and mask);
# a profile larger than this (8K frames, large batches) allocates per shape instead.
PINNED_BUDGET = 1 << 28


def numpy_dtype(dtype: Any, what: str = "tensor") -> np.dtype:
    """The numpy dtype of a TensorRT ``DataType``; ModelLoadError for types segrt does not exchange."""
    name = getattr(dtype, "name", str(dtype))
    if name not in TRT_NUMPY:
        raise ModelLoadError(f"{what} has TensorRT type {name}; segrt exchanges {', '.join(TRT_NUMPY)}")
    return np.dtype(TRT_NUMPY[name])


def nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def expected_mask_shape(frames_shape: tuple[int, ...], stride: int) -> tuple[int, int, int]:
    """(N, ceil(H / s), ceil(W / s)): the mask a frame-form engine returns for (N, H, W, 3) frames."""
    n, h, w = (int(d) for d in frames_shape[:3])
    return (n, *mask_size((h, w), stride))


def frame_buffer_bytes(max_frames_shape: tuple[int, ...], out_dtype: np.dtype, stride: int) -> tuple[int, int]:
    """Bytes of uint8 frame input and of mask output at the profile's largest (N, H, W, 3) shape."""
    return nbytes(max_frames_shape, np.dtype(np.uint8)), nbytes(expected_mask_shape(max_frames_shape, stride),
                                                                out_dtype)


def check_batch(batch: object, form: str, input_shape: tuple[int | None, ...]) -> np.ndarray:
    """The batch ``run`` was given, checked against the engine's input (layout by form, static dimensions)."""
    if not isinstance(batch, np.ndarray):
        raise InputError(f"expected a numpy batch, got {type(batch).__name__}")
    if form == "frame":
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise InputError(f"expected an (N, H, W, 3) uint8 frame batch, got {batch.dtype} {batch.shape}")
    elif batch.ndim != 4 or batch.shape[1] != 3:
        raise InputError(f"expected an (N, 3, H, W) batch, got shape {batch.shape}")
    if 0 in batch.shape:
        raise InputError(f"batch shape {batch.shape} is empty")
    for axis, want in enumerate(input_shape):
        if want is not None and batch.shape[axis] != want:
            raise InputError(f"batch shape {batch.shape} does not fit the engine input {tuple(input_shape)}")
    return batch


def _host_array(ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A numpy view of pinned host memory at ``ptr``."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
    return np.ctypeslib.as_array(raw).view(dtype).reshape(shape)


def prepare_runtime(runtime: trt.Runtime, version_compatible: bool, dla_core: int | None) -> None:
    """Runtime settings that must precede deserialisation (the builder's ``--adopt`` uses them too): a
    version-compatible engine embeds host code (its lean runtime), so loading it needs
    ``engine_host_code_allowed``; a DLA engine runs on the core the runtime names (as trtexec does)."""
    if version_compatible:
        runtime.engine_host_code_allowed = True
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)


class _Buffers:
    """Pinned host + device memory for one input and one output, of fixed capacities; :meth:`bind` views them
    at one input shape (any shape that fits reuses them: the addresses TensorRT and a CUDA graph hold stay)."""

    def __init__(self, in_capacity: int, out_capacity: int):
        self._cudart = _cudart()
        self.in_capacity, self.out_capacity = in_capacity, out_capacity
        self.in_shape: tuple[int, ...] | None = None  # the bound shapes (None: not bound)
        self.out_shape: tuple[int, ...] | None = None
        self.in_bytes = self.out_bytes = 0
        self.pointers: list[tuple[str, int]] = []
        try:
            self.host_in_ptr = self._alloc_host(in_capacity)
            self.host_out_ptr = self._alloc_host(out_capacity)
            self.dev_in = self._alloc_device(in_capacity)
            self.dev_out = self._alloc_device(out_capacity)
        except BackendError:
            self.free()
            raise
        self.host_in = self.host_out = np.empty(0)

    def fits(self, in_bytes: int, out_bytes: int) -> bool:
        return in_bytes <= self.in_capacity and out_bytes <= self.out_capacity

    def bind(self, in_shape: tuple[int, ...], in_dtype: np.dtype, out_shape: tuple[int, ...],
             out_dtype: np.dtype) -> None:
        self.in_bytes, self.out_bytes = nbytes(in_shape, in_dtype), nbytes(out_shape, out_dtype)
        if not self.fits(self.in_bytes, self.out_bytes):
            raise BackendError(f"buffers of {self.in_capacity} and {self.out_capacity} bytes cannot hold input "
                               f"{in_shape} and output {out_shape}")
        self.host_in = _host_array(self.host_in_ptr, in_shape, in_dtype)
        self.host_out = _host_array(self.host_out_ptr, out_shape, out_dtype)
        self.in_shape, self.out_shape = in_shape, out_shape

    def _alloc_host(self, nbytes: int) -> int:
        ptr = int(_cuda(self._cudart.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes})"))
        self.pointers.append(("host", ptr))
        return ptr

    def _alloc_device(self, nbytes: int) -> int:
        ptr = int(_cuda(self._cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes})"))
        self.pointers.append(("device", ptr))
        return ptr

    def free(self) -> None:
        for kind, ptr in self.pointers:
            if kind == "host":
                self._cudart.cudaFreeHost(ptr)
            else:
                self._cudart.cudaFree(ptr)
        self.pointers.clear()


class TensorRTBackend:
    def __init__(self, path: str | Path, device: int = 0, cuda_graph: bool = False):
        import_tensorrt()  # a typed segrt error when only the stubs (or nothing) are installed
        import tensorrt as trt

        cudart = _cudart()
        self.path = Path(path)
        self.device = device
        self._lock = threading.Lock()
        self._buffers: _Buffers | None = None
        self._graph: Any = None
        self._graph_exec: Any = None
        self.use_cuda_graph = cuda_graph
        self.cuda_graph_error: str | None = None  # why capture was abandoned, if it was
        if not self.path.is_file():
            raise ModelLoadError(f"engine file {self.path} does not exist")

        count = _cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device >= count:
            raise BackendUnavailableError(f"CUDA device {device} requested but {count} visible")
        _cuda(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
        prop = _cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        compute_capability = (int(prop.major), int(prop.minor))

        # Checks version, GPU and hash; raises before deserialisation.
        self.manifest, data = load_checked_engine(self.path, trt.__version__, compute_capability)

        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # engines may embed standard plugins (ScatterElements)
        self._runtime = trt.Runtime(self._logger)
        prepare_runtime(self._runtime, self.manifest.version_compatible, self.manifest.dla_core)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None and self.manifest.plugins:
            raise plugin_load_error(self.manifest, self.path, trt.__version__)
        if engine is None:
            raise ModelLoadError(f"TensorRT {trt.__version__} could not deserialise {self.path} although its manifest "
                                 "matches; rebuild it (a plugin it needs may be missing)")
        self._engine: trt.ICudaEngine = engine
        self._context: trt.IExecutionContext = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelLoadError(f"{self.path}: expected one input and one output, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = numpy_dtype(engine.get_tensor_dtype(self.input_name), f"{self.path}: input")
        self.output_dtype = numpy_dtype(engine.get_tensor_dtype(self.output_name), f"{self.path}: output")
        shape = self._dims(engine.get_tensor_shape(self.input_name))
        if len(shape) != 4:
            raise ModelLoadError(f"{self.path}: input shape {shape} is not (N, 3, H, W) tensors or (N, H, W, 3) "
                                 "frames")
        self.input_shape = (self._dim(shape[0]), self._dim(shape[1]), self._dim(shape[2]), self._dim(shape[3]))
        self.max_batch = self._max_batch()
        # float32 NCHW (form "tensor") or uint8 NHWC (form "frame"): checked against the metadata's form
        self.metadata = self._read_metadata()
        self.form = self.metadata.form
        self.name = f"tensorrt:{trt.__version__}:{self.manifest.precision}"
        self._stream = _cuda(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags")
        if self.form == "frame":
            self._reserve_frame_buffers()

    @staticmethod
    def _dims(dims: trt.Dims) -> tuple[int, ...]:
        return tuple(int(dims[i]) for i in range(len(dims)))

    @staticmethod
    def _dim(d: int) -> int | None:
        return None if d < 0 else d

    def _max_batch(self) -> int:
        """The largest batch one enqueue may take: the fixed batch, else profile 0's maximum."""
        if self.input_shape[0] is not None:
            return self.input_shape[0]
        _lo, _opt, hi = self._engine.get_tensor_profile_shape(self.input_name, 0)
        return max(1, int(hi[0]))

    def _max_input_shape(self) -> tuple[int, ...]:
        """The largest input shape the engine takes: its static shape, else profile 0's maximum."""
        if all(d is not None for d in self.input_shape):
            return tuple(int(d) for d in self.input_shape)  # type: ignore[arg-type]
        _lo, _opt, hi = self._engine.get_tensor_profile_shape(self.input_name, 0)
        return self._dims(hi)

    def _reserve_frame_buffers(self) -> None:
        """Pinned and device buffers for the profile's largest frame batch, once (a new frame size rebinds them)."""
        in_bytes, out_bytes = frame_buffer_bytes(self._max_input_shape(), self.output_dtype,
                                                 self.metadata.output_stride)
        if in_bytes + out_bytes <= PINNED_BUDGET:
            _cuda(_cudart().cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            self._buffers = _Buffers(in_bytes, out_bytes)

    def _read_metadata(self) -> ModelMetadata:
        if self.manifest.metadata:
            meta = ModelMetadata.from_dict(self.manifest.metadata)
        else:
            out = self.manifest.outputs[0].shape
            if len(out) != 4 or out[1] < 1:
                raise ModelLoadError(f"{self.path}: manifest has no segrt metadata and output shape {out} gives no "
                                     "class count")
            meta = ModelMetadata(classes=[f"class_{i}" for i in range(out[1])], input_size=None)
        # The same checks as the ONNX Runtime backend: the record must describe this engine's I/O.
        out_shape = tuple(self._dim(d) for d in self._dims(self._engine.get_tensor_shape(self.output_name)))
        return check_against_io(meta, self.input_shape, out_shape, self.output_dtype, self.path,
                                input_dtype=self.input_dtype)

    # ------------------------------------------------------------------ execution
    def _prepare(self, shape: tuple[int, ...]) -> _Buffers:
        """Set a new input shape, bind buffers that hold it (reused when they fit, else reallocated) and
        capture a CUDA graph if asked (the previous one recorded other sizes)."""
        self._release_graph()
        if self._buffers is not None:
            self._buffers.in_shape = None  # unbound until this succeeds: a failure here re-prepares next time
        if not self._context.set_input_shape(self.input_name, shape):
            raise InputError(f"input shape {shape} is outside the engine's optimization profile "
                             f"{self._profile_text()}")
        out_shape = self._dims(self._context.get_tensor_shape(self.output_name))
        if any(d < 0 for d in out_shape):
            raise BackendError(f"output shape {out_shape} is still dynamic after setting the input shape")
        if self.form == "frame" and out_shape != expected_mask_shape(shape, self.metadata.output_stride):
            raise BackendError(f"{self.path}: the engine's mask for frames {shape} is {out_shape}; expected "
                               f"{expected_mask_shape(shape, self.metadata.output_stride)}")
        buffers = self._buffers
        if buffers is None or not buffers.fits(nbytes(shape, self.input_dtype), nbytes(out_shape, self.output_dtype)):
            if buffers is not None:
                _cuda(_cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                buffers.free()
                self._buffers = None
            buffers = _Buffers(nbytes(shape, self.input_dtype), nbytes(out_shape, self.output_dtype))
            self._buffers = buffers
        for name, address in ((self.input_name, buffers.dev_in), (self.output_name, buffers.dev_out)):
            if not self._context.set_tensor_address(name, address):
                raise BackendError(f"{self.path}: TensorRT refused the device address for tensor {name!r}")
        buffers.bind(shape, self.input_dtype, out_shape, self.output_dtype)
        if self.use_cuda_graph:
            self._capture(buffers)
        return buffers

    def _profile_text(self) -> str:
        try:
            lo, opt, hi = (self._dims(d) for d in self._engine.get_tensor_profile_shape(self.input_name, 0))
            return f"min {lo}, opt {opt}, max {hi}"
        except (RuntimeError, TypeError, ValueError):
            return "(unknown)"

    def _enqueue(self, buffers: _Buffers) -> None:
        cudart = _cudart()
        _cuda(cudart.cudaMemcpyAsync(buffers.dev_in, buffers.host_in_ptr, buffers.in_bytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream), "cudaMemcpyAsync H2D")
        if not self._context.execute_async_v3(stream_handle(self._stream)):
            raise BackendError(f"TensorRT execute_async_v3 failed on input shape {buffers.in_shape}")
        _cuda(cudart.cudaMemcpyAsync(buffers.host_out_ptr, buffers.dev_out, buffers.out_bytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream), "cudaMemcpyAsync D2H")

    def _capture(self, buffers: _Buffers) -> None:
        """Record copy-in, inference and copy-out once; later frames replay it with one launch.

        TensorRT needs one regular enqueue after a shape change before capture. Engines that cannot be
        captured (DLA, some plugins) keep running without a graph; the reason is kept for diagnostics."""
        cudart = _cudart()
        self._enqueue(buffers)
        _cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        try:
            _cuda(cudart.cudaStreamBeginCapture(self._stream,
                                                cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture")
            try:
                self._enqueue(buffers)
            finally:
                self._graph = _cuda(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            self._graph_exec = _cuda(cudart.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")
        except BackendError as exc:
            self._release_graph()
            self.use_cuda_graph = False
            self.cuda_graph_error = str(exc)

    def _release_graph(self) -> None:
        cudart = _cudart()
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self._graph is not None:
            cudart.cudaGraphDestroy(self._graph)
            self._graph = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> logits or labels (form "tensor"); uint8 (N, H, W, 3) frames -> (N, Hm, Wm) masks
        (form "frame": uint8 in, the mask out, nothing else crosses the bus)."""
        check_batch(batch, self.form, self.input_shape)
        if len(batch) <= self.max_batch:
            out = self._run_chunk(batch)
        else:
            # More frames than the profile takes (several cameras on an engine built for fewer): run in chunks.
            out = np.concatenate([self._run_chunk(batch[i : i + self.max_batch])
                                  for i in range(0, len(batch), self.max_batch)])
        frame_hw = (int(batch.shape[1]), int(batch.shape[2])) if self.form == "frame" else None
        return check_output(self.metadata, out, len(batch), self.path, frame_hw=frame_hw)

    def _run_chunk(self, batch: np.ndarray) -> np.ndarray:
        cudart = _cudart()
        with self._lock:
            if self._context is None:
                raise BackendError("the TensorRT backend is closed")
            # The current device is per host thread: this thread may not be the one that opened the engine.
            _cuda(cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            buffers = self._buffers
            if buffers is None or buffers.in_shape != tuple(batch.shape):
                buffers = self._prepare(tuple(int(d) for d in batch.shape))
            np.copyto(buffers.host_in, batch, casting="same_kind")
            if self._graph_exec is not None:
                _cuda(cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
            else:
                self._enqueue(buffers)
            _cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            out = buffers.host_out.copy()  # the pinned buffer is reused by the next call
        return out.astype(np.float32) if out.dtype == np.float16 else out

    def close(self) -> None:
        with self._lock:
            if getattr(self, "_context", None) is None:
                return
            cudart = _cudart()
            cudart.cudaSetDevice(self.device)  # the frees below target this engine's GPU, whichever thread closes
            cudart.cudaStreamSynchronize(self._stream)
            self._release_graph()
            if self._buffers is not None:
                self._buffers.free()
                self._buffers = None
            cudart.cudaStreamDestroy(self._stream)
            # Destroy in reverse order of creation: context, engine, runtime.
            self._context = None  # type: ignore[assignment]
            self._engine = None  # type: ignore[assignment]
            self._runtime = None  # type: ignore[assignment]

    def __del__(self) -> None:
        # Interpreter shutdown may already have torn down cuda-python; never raise from a finalizer.
        with contextlib.suppress(Exception):
            self.close()
