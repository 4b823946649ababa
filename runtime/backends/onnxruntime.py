"""ONNX Runtime backend: the embedded default, CPU first; CUDA and TensorRT execution providers when present."""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segrt.runtime.errors import (
    BackendError,
    BackendUnavailableError,
    InputError,
    MissingPluginError,
    ModelLoadError,
    UnsafeModelError,
)
from segrt.runtime.metadata import ModelMetadata, check_against_io, check_output

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


# ONNX Runtime's type strings -> numpy; a type not listed (string, bfloat16, ...) is refused by the checks
ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


# ONNX Runtime graph optimisers segrt's CPU sessions leave out. MatMulAddFusion turns a MatMul + bias Add into Gemm;
# left as they are, the bias Adds fuse into BiasGelu and SkipLayerNormalization instead, one pass fewer each:
# camvid-b0's network 46.3 -> 43.4 ms at batch 1 (benchmarks/results/batch_one.md), make bench's segrt FP32 tier
# (static batch, 512x512) 69.3 -> 58.4 ms.
CPU_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a base dependency
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
    return ort


def choose_providers(device: str) -> list[str]:
    """``auto`` takes the fastest provider this ONNX Runtime build has; others name one explicitly."""
    available = _ort().get_available_providers()
    if device == "auto":
        wanted = [p for p in PROVIDER_ALIASES["tensorrt"] if p in available]
        return wanted or ["CPUExecutionProvider"]
    if device not in PROVIDER_ALIASES:
        raise BackendUnavailableError(
            f"unknown ONNX Runtime device {device!r}; expected auto, {', '.join(PROVIDER_ALIASES)}")
    wanted = PROVIDER_ALIASES[device]
    if wanted[0] not in available:
        raise BackendUnavailableError(
            f"{wanted[0]} is not available in this onnxruntime build (available: {', '.join(available)}); "
            "install onnxruntime-gpu for CUDA/TensorRT")
    return [p for p in wanted if p in available]


def _classify_load_error(path: Path, exc: Exception) -> ModelLoadError:
    msg = str(exc)
    if any(s in msg for s in ("custom op", "not a registered function/op", "Could not find an implementation",
                              "No Op registered")):
        return MissingPluginError(f"{path}: the model uses an operator this ONNX Runtime does not provide: {msg}")
    too_new = _too_new_for_this_runtime(msg)
    if too_new:
        return ModelLoadError(f"{path}: the model's {too_new}: upgrade onnxruntime, or, for a model segrt exported, "
                              "export it again with `segrt export` at opset 17 (the default; segrt writes the lowest "
                              "IR version an opset needs, IR 8 for opset 17, which onnxruntime 1.17 and later read)")
    return ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {msg}")


_IR_TOO_NEW = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_TOO_NEW = re.compile(r"Opset (\d+) is under development.*?Current official support for domain (\S+) is till "
                            r"opset (\d+)", re.DOTALL)


def _too_new_for_this_runtime(msg: str) -> str | None:
    """What of the file this ONNX Runtime is too old for (IR version or opset), from its load error; else None."""
    installed = _ort().__version__
    if ir := _IR_TOO_NEW.search(msg):
        return f"IR version {ir[1]} is newer than onnxruntime {installed} reads (IR <= {ir[2]})"
    if opset := _OPSET_TOO_NEW.search(msg):
        return f"opset {opset[1]} is newer than onnxruntime {installed} supports ({opset[2]} up to opset {opset[3]})"
    return None


def _tensors(graph):
    """Every TensorProto a graph holds: initializers, sparse initializers, constant attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(path: Path):
    """Refuse a model whose external-data files lie outside its own folder, before ONNX Runtime opens any;
    returns the graph it parsed (without weights), or None.

    A model can name arbitrary files as tensor storage (``../../etc/shadow``, an absolute path, a
    symlink out); loading it would read them into the network. Needs the ``onnx`` package to parse the
    graph without its data; where onnx is not installed (it is not a runtime dependency) the check is
    skipped and ONNX Runtime's own path validation is all there is.
    """
    try:
        import onnx
        from onnx import TensorProto
    except ImportError:
        return None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError: a truncated or non-ONNX file
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    folder = path.resolve().parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()  # resolve() follows symlinks and "..", so both count
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UnsafeModelError(f"{path}: tensor {tensor.name!r} stores its data at {location!r}, outside the "
                                   f"model's folder {folder}; segrt refuses external data that is not next to "
                                   "the model")
    return model


class OnnxRuntimeBackend:
    input_shape: tuple[int | None, int | None, int | None, int | None]

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        _ort()  # no onnxruntime: BackendUnavailableError before the file is looked at
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file {self.path} does not exist")
        graph = check_external_data(self.path)
        self.providers = choose_providers(device)
        cpu_only = self.providers == ["CPUExecutionProvider"]
        # On the CPU every run goes through a session specialised to batch 1 (a batch of N runs frame by frame):
        # with the batch dimension static, ONNX Runtime's optimiser turns the decoder's Resize into its Upsample
        # kernel and drops transposes and layout reorders it keeps for a symbolic batch (camvid-b0's network
        # 57.5 -> 46.3 ms, benchmarks/results/batch_one.md).
        declared = self._declared_input(graph) if cpu_only else None
        # the input's symbolic batch dimension that the sessions fix to 1 (None: the model runs as it is)
        self.batch_dim: str | None = batch_dim_to_fix(declared[1]) if declared is not None else None
        self.session = self._open_session(threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if declared is not None and inputs and (inputs[0].name, len(inputs[0].shape)) != (declared[0],
                                                                                          len(declared[1])):
            raise ModelLoadError(f"{self.path} changed while it was being loaded (input {declared[0]!r} became "
                                 f"{inputs[0].name!r}); load it again")
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: expected one image input, found {len(inputs)}")
        if not outputs:
            raise ModelLoadError(f"{self.path}: the graph has no output")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        shape = _static_dims(inputs[0].shape)
        if self.batch_dim is not None and shape:  # the session runs batch 1; the model takes any batch
            shape[0] = None
        # The layout (N, 3, H, W) float32 or (N, H, W, 3) uint8 depends on the metadata's form: checked with it.
        if shape is None or len(shape) != 4:
            raise ModelLoadError(f"{self.path}: input {inputs[0].name} has shape {inputs[0].shape}; expected "
                                 "(N, 3, H, W) float32 tensors or (N, H, W, 3) uint8 frames")
        input_dtype = ORT_TYPES.get(inputs[0].type)
        if input_dtype not in (np.float32, np.uint8):
            raise ModelLoadError(f"{self.path}: input type {inputs[0].type}; expected float32 (N, 3, H, W) tensors "
                                 "or uint8 (N, H, W, 3) frames")
        self.input_shape = tuple(shape)  # type: ignore[assignment]
        self.metadata = self._read_metadata(outputs[0], np.dtype(input_dtype))
        self.form = self.metadata.form
        self.name = "onnxruntime:" + self.session.get_providers()[0].removesuffix("ExecutionProvider").lower()
        # Several batches at once (several cameras): on the CPU, one single-threaded run per core. A
        # multi-threaded run waits for its slowest thread at every node; independent single-threaded runs do not
        # (4 cameras on 2 cores: 1.09x the frames per second of 2-thread runs one after another,
        # benchmarks/results/multicam.md).
        self.lanes = max(1, threads or os.cpu_count() or 1) if cpu_only else 1
        self._lane_session = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _read_metadata(self, output, input_dtype: np.dtype) -> ModelMetadata:
        """The model's segrt metadata (or, for a foreign ONNX, today's defaults from its shapes), checked against
        the graph's input and output before anything is allocated."""
        try:
            custom = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as exc:
            raise ModelLoadError(f"{self.path}: the model's metadata_props are not UTF-8 text: {exc}") from exc
        out_shape = _static_dims(output.shape)
        out_dtype = ORT_TYPES.get(output.type)
        if out_dtype is None:
            raise ModelLoadError(f"{self.path}: output {output.name} has type {output.type}; expected a float or "
                                 "integer tensor")
        meta = ModelMetadata.from_onnx(custom)
        if meta is None:
            # A foreign ONNX (not exported by segrt): describe it from its shapes, ImageNet normalisation.
            k = out_shape[1] if out_shape is not None and len(out_shape) == 4 else None
            if k is None:
                raise ModelLoadError(f"{self.path}: no segrt metadata and the output shape {output.shape} "
                                     "does not give the class count; export with `segrt export`")
            meta = ModelMetadata(classes=[f"class_{i}" for i in range(k)], input_size=None)
        return check_against_io(meta, self.input_shape, out_shape, np.dtype(out_dtype), self.path,
                                input_dtype=input_dtype)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> logits or labels (form "tensor"); uint8 (N, H, W, 3) BGR frames -> (N, Hm, Wm)
        masks in the metadata's mask dtype (form "frame")."""
        return self._run_on(self.session, batch)

    def run_many(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`run` of each batch, up to :attr:`lanes` at once on a single-threaded session of the same model
        (ONNX Runtime sessions take concurrent runs); outputs in the order of ``batches``."""
        self._check_open()
        if len(batches) < 2 or self.lanes < 2:
            return [self.run(b) for b in batches]
        session, pool = self._lanes()
        return list(pool.map(lambda b: self._run_on(session, b), batches))

    def _lanes(self):
        with self._lock:  # created on first use: an Engine that never gets two batches at once pays nothing
            self._check_open()  # not reopened by a call after close()
            if self._lane_session is None or self._pool is None:
                self._lane_session = self._open_session(threads=1)
                self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="segrt-lane")
            return self._lane_session, self._pool

    def _declared_input(self, graph) -> tuple[str, list] | None:
        """:func:`declared_input` of the graph check_external_data parsed or, without the onnx package, of a
        session opened for that alone and dropped before the session that runs is opened."""
        if graph is not None:
            return declared_input(graph)
        probe = self._open_session(1, optimise=False)
        found = [(i.name, list(i.shape or [])) for i in probe.get_inputs()[:1]]
        del probe
        return found[0] if found else None

    def _open_session(self, threads: int | None, optimise: bool = True):
        """:func:`open_session` of this model, its load errors typed (``optimise`` False: for reading the model's
        inputs only)."""
        try:
            return open_session(str(self.path), self.providers, threads, optimise=optimise,
                                batch_dim=self.batch_dim if optimise else None)
        except Exception as exc:
            raise _classify_load_error(self.path, exc) from exc

    def _check_open(self) -> None:
        if self.session is None:
            raise BackendError(f"{self.path}: this backend was closed; open the model again")

    def _run_on(self, session, batch: np.ndarray) -> np.ndarray:
        self._check_open()
        if len(batch) == 0:
            raise InputError(f"an empty batch (shape {batch.shape}); pass at least one frame")
        if self.batch_dim is None or len(batch) == 1:
            out = self._run_one(session, batch, "a batch")
        else:  # the batch-1 session: one frame at a time, which on the CPU is also faster than one batch of N
            out = np.concatenate([self._run_one(session, batch[i : i + 1], f"frame {i} of a batch of {len(batch)}")
                                  for i in range(len(batch))])
        # a dynamic graph's output shape is only known now: it must still be what the metadata says
        frame_hw = (int(batch.shape[1]), int(batch.shape[2])) if self.form == "frame" else None
        return check_output(self.metadata, out, batch.shape[0], self.path, frame_hw=frame_hw)

    def _run_one(self, session, x: np.ndarray, what: str) -> np.ndarray:
        try:
            return session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed on {what} (input shape {x.shape}): {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool, self._lane_session = None, None
            self.session = None  # type: ignore[assignment]


def _static_dims(shape) -> list[int | None] | None:
    """ONNX Runtime's shape (ints for static dimensions, names or None for dynamic ones); None: rank unknown."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in shape]


def open_session(source: str | bytes, providers: list[str], threads: int | None, *, optimise: bool = True,
                 batch_dim: str | None = None):
    """An ONNX Runtime session as segrt runs models: ``threads`` intra-op threads (None or 0: ONNX Runtime's
    default), the symbolic batch dimension ``batch_dim`` fixed to 1, and on the CPU provider
    :data:`CPU_DISABLED_OPTIMIZERS` left out (``optimise`` False: no graph optimisations at all)."""
    ort = _ort()
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if threads == 1:
        opts.inter_op_num_threads = 1
    if batch_dim is not None:
        opts.add_free_dimension_override_by_name(batch_dim, 1)
    opts.log_severity_level = 3
    cpu = providers == ["CPUExecutionProvider"]
    skip = {"disabled_optimizers": list(CPU_DISABLED_OPTIMIZERS)} if optimise and cpu else {}
    return ort.InferenceSession(source, sess_options=opts, providers=providers, **skip)


def declared_input(graph) -> tuple[str, list] | None:
    """An ONNX ModelProto's image input as the file declares it: (name, dims, with the names of symbolic ones
    and None for unknown ones), or None if the graph has no input that is not an initializer."""
    weights = {t.name for t in graph.graph.initializer}
    value = next((v for v in graph.graph.input if v.name not in weights), None)
    if value is None:
        return None
    return value.name, [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in value.type.tensor_type.shape.dim]


def batch_dim_to_fix(shape) -> str | None:
    """The name of an input's symbolic batch dimension, which a session can fix to 1; None where the batch is
    static, unnamed, or named like another axis (fixing it would fix that axis too)."""
    if not shape or not isinstance(shape[0], str) or not shape[0]:
        return None
    return None if shape[0] in shape[1:] else shape[0]


def default_threads() -> int | None:
    value = os.environ.get("SEGRT_THREADS")
    return int(value) if value else None
