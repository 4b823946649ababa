"""``segrt serve``: any model :class:`Engine` runs, served by a local Triton Inference Server through PyTriton.

    with SegrtServer("camvid-b0", http_port=8000, grpc_port=8001) as server:
        server.wait()                       # until SIGINT/SIGTERM or server.stop()

The Engine is built once in this process; Triton's dynamic batcher hands each model instance a list of
requests (all of one frame shape: Triton batches only equal shapes), which run as one
:meth:`Engine.infer_batch` call. Models, tensor names and the error wording: :mod:`segrt.runtime.remote_protocol`.
Health (``/v2/health/live``, ``/v2/health/ready``) and Prometheus metrics (``:metrics_port/metrics``) are
Triton's own. A segrt error (a frame size a fixed-size model refuses, a corrupt JPEG) fails its request as a
Triton error whose message is segrt's, and the client raises the same type again. For raw frames that is the
batch the request was in (PyTriton fails a batch as a whole; its frames share the shape that was refused);
encoded images are not batched across requests, so a bad file fails only its own request.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import numpy as np

from segrt.runtime.arguments import check_choice, check_int
from segrt.runtime.engine import BACKENDS, Engine
from segrt.runtime.errors import BackendError, ConfigError, InputError, SegrtError
from segrt.runtime.remote_protocol import (
    ENCODED_SUFFIX,
    FRAME,
    IMAGE,
    INFO_SUFFIX,
    MASK,
    METADATA,
    QUERY,
    check_encoded,
    error_text,
    info_json,
)
from segrt.serving.libpython import server_environment, stub_environment

log = logging.getLogger("segrt.serve")

MAX_BATCH = 256
MAX_INSTANCES = 64
MAX_QUEUE_DELAY_US = 1_000_000


def model_name(model: str | Path) -> str:
    """The Triton model name for a segrt model: the bundled name, or the file's stem, in Triton's alphabet."""
    stem = Path(str(model)).stem if str(model).lower().endswith((".onnx", ".engine", ".plan", ".trt")) else str(model)
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip(".-") or "segrt"
    return name


class BatchLog:
    """How many frames each model execution got: the batch sizes Triton's dynamic batcher formed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sizes: collections.Counter[int] = collections.Counter()

    def add(self, n: int) -> None:
        with self._lock:
            self.sizes[n] += 1

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return dict(sorted(self.sizes.items()))


def _failed(exc: BaseException) -> Exception:
    """What a request that raised returns to Triton: segrt's own message for a segrt error."""
    if not isinstance(exc, SegrtError):
        exc = BackendError(f"{type(exc).__name__}: {exc}")
    return RuntimeError(error_text(exc))


def _stubs(prefix: str) -> list[int]:
    """Pids of Python backend stubs of one server: their command line names its shared-memory prefix."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(a.startswith(prefix.encode()) for a in args)
        if args and args[0].endswith(b"triton_python_backend_stub") and ours:
            pids.append(int(cmdline.parent.name))
    return pids


def reap_stubs(prefix: str, grace: float = 3.0) -> int:
    """Stubs left behind once tritonserver has exited (its exit timeout can cut their shutdown short and they
    do not always notice): given ``grace`` seconds to go, then killed by pid, and their shared memory removed."""
    deadline = time.monotonic() + grace
    while (pids := _stubs(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shm = Path("/dev/shm")
    if pids and shm.is_dir():
        time.sleep(0.2)
        for leftover in shm.glob(f"{prefix}*"):
            leftover.unlink(missing_ok=True)
    return len(pids)


def _shm_prefix(triton: Any) -> str:
    """The shared-memory prefix PyTriton gave this server's stubs (a private field; else its documented form)."""
    try:
        return str(triton._python_backend_config["shm-region-prefix-name"])
    except (AttributeError, KeyError, TypeError):
        return f"pytrtion{os.getpid()}-"


class SegrtServer:
    def __init__(self, model: str | Path = "camvid-b0", *, name: str | None = None, host: str = "127.0.0.1",
                 http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002, max_batch: int = 8,
                 instances: int = 1, queue_delay_us: int = 2000, backend: str = "auto", threads: int | None = None,
                 exit_timeout: int = 5, log_verbose: int = 0):
        for port, label in ((http_port, "http_port"), (grpc_port, "grpc_port"), (metrics_port, "metrics_port")):
            check_int(port, label, minimum=1, maximum=65535)
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ConfigError(f"http_port, grpc_port and metrics_port must differ, got {http_port}, {grpc_port}, "
                              f"{metrics_port}")
        check_int(max_batch, "max_batch", minimum=1, maximum=MAX_BATCH)
        check_int(instances, "instances", minimum=1, maximum=MAX_INSTANCES)
        check_int(queue_delay_us, "queue_delay_us", minimum=0, maximum=MAX_QUEUE_DELAY_US)
        check_choice(backend, "backend", BACKENDS)
        check_int(exit_timeout, "exit_timeout", minimum=0, maximum=3600)
        self.engine = Engine(model, backend=backend, threads=threads)
        self.name = name or model_name(model)
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.max_batch, self.instances, self.queue_delay_us = max_batch, instances, queue_delay_us
        self.exit_timeout = exit_timeout  # seconds a stopping server waits for in-flight requests and connections
        self.log_verbose = log_verbose
        self.batches = BatchLog()
        self._triton: Any = None
        self._stopped = threading.Event()
        self._info = np.array([info_json(self.engine.metadata, self.engine.mask_dtype).encode()], dtype=object)

    # ------------------------------------------------------------------ inference callables
    def _masks(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.add(len(frames))
        return self.engine.infer_batch(frames)

    def _run_requests(self, requests: Sequence[Any], frames_of: Callable[[Any, int], list[np.ndarray]]) -> list:
        """One infer_batch over every request's frames, split back into one reply per request.

        PyTriton fails a whole batch when its callable raises. For raw frames that is what each request would
        get anyway: a batch holds frames of one shape, and what the Engine refuses (a fixed frame size) it
        refuses for that shape. Encoded images are not batched across requests, so one bad file fails alone.
        """
        try:
            frames = [frames_of(request, r) for r, request in enumerate(requests)]
            masks = self._masks([f for group in frames for f in group])
        except Exception as exc:
            raise _failed(exc) from exc
        replies: list = []
        start = 0
        for group in frames:
            part = masks[start : start + len(group)]
            start += len(group)
            if len({m.shape for m in part}) > 1:
                raise _failed(InputError("the images of one request must have one size"))
            replies.append({MASK: np.stack(part)})
        return replies

    def _frames(self, request: Any, r: int) -> list[np.ndarray]:  # noqa: ARG002 - one signature with _images
        batch = request[FRAME]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise InputError(f"request {r}: {FRAME} has shape {batch.shape}; expected (N, H, W, 3) uint8 BGR")
        return list(batch)

    def _images(self, request: Any, r: int) -> list[np.ndarray]:
        frames = []
        for i, item in enumerate(request[IMAGE].reshape(-1)):
            data = bytes(item)
            label = f"image {i}" if r == 0 else f"request {r} image {i}"
            check_encoded(data, label)
            frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if frame is None:
                raise InputError(f"{label} ({len(data)} bytes) could not be decoded as an image")
            frames.append(frame)
        return frames

    def infer_frames(self, requests: Sequence[Any]) -> list:
        return self._run_requests(requests, self._frames)

    def infer_images(self, requests: Sequence[Any]) -> list:
        return self._run_requests(requests, self._images)

    def infer_info(self, requests: Sequence[Any]) -> list:
        return [{METADATA: self._info} for _ in requests]

    # ------------------------------------------------------------------ lifetime
    def _bind(self, triton: Any) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        mask = Tensor(name=MASK, dtype=np.dtype(self.engine.mask_dtype).type, shape=(-1, -1))
        batcher = DynamicBatcher(max_queue_delay_microseconds=self.queue_delay_us)
        config = ModelConfig(max_batch_size=self.max_batch, batcher=batcher)
        triton.bind(model_name=self.name, infer_func=[self.infer_frames] * self.instances,
                    inputs=[Tensor(name=FRAME, dtype=np.uint8, shape=(-1, -1, 3))], outputs=[mask], config=config)
        # Not batched across requests (see _run_requests): a request is one image or several of one size.
        triton.bind(model_name=self.name + ENCODED_SUFFIX, infer_func=[self.infer_images] * self.instances,
                    inputs=[Tensor(name=IMAGE, dtype=bytes, shape=(-1,))],
                    outputs=[Tensor(name=MASK, dtype=mask.dtype, shape=(-1, -1, -1))],
                    config=ModelConfig(batching=False))
        triton.bind(model_name=self.name + INFO_SUFFIX, infer_func=self.infer_info,
                    inputs=[Tensor(name=QUERY, dtype=np.uint8, shape=(1,))],
                    outputs=[Tensor(name=METADATA, dtype=bytes, shape=(1,))], config=ModelConfig(batching=False))

    def start(self) -> SegrtServer:
        """Start tritonserver and load the models; returns when they are ready, or raises BackendError (PyTriton
        bounds the wait: 120 s for the server, 60 s per model)."""
        from pytriton.triton import Triton, TritonConfig  # lazy: the serve extra

        stub_env = stub_environment()
        config = TritonConfig(http_address=self.host, http_port=self.http_port, grpc_address=self.host,
                              grpc_port=self.grpc_port, metrics_port=self.metrics_port,
                              exit_timeout_secs=self.exit_timeout,
                              log_verbose=self.log_verbose)
        try:
            with server_environment(stub_env):
                triton = Triton(config=config)
                self._triton = triton
                self._bind(triton)
                triton.run()
        except Exception as exc:
            self.stop()
            raise BackendError(f"Triton could not serve {self.name}: {type(exc).__name__}: {exc}") from exc
        log.info("serving %s: http %s:%d, grpc %s:%d, metrics :%d", self.name, self.host, self.http_port,
                 self.host, self.grpc_port, self.metrics_port)
        return self

    def wait(self, handle_signals: bool = True) -> None:
        """Block until stop(), SIGINT or SIGTERM (then stop gracefully: in-flight requests finish) or Triton dies."""
        previous: dict[signal.Signals, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self._stopped.set()

        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            while not self._stopped.wait(0.5):
                if self._triton is None or not self._triton.is_alive():
                    raise BackendError(f"the Triton server of {self.name} stopped unexpectedly")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self) -> None:
        self._stopped.set()
        triton, self._triton = self._triton, None
        if triton is not None:
            prefix = _shm_prefix(triton)
            triton.stop()
            reap_stubs(prefix)

    def close(self) -> None:
        self.stop()
        self.engine.close()

    def __enter__(self) -> SegrtServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
