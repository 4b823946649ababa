"""``RemoteEngine``: an Engine whose model runs on a Triton server (``segrt serve`` or ``segrt export-triton``).

    engine = RemoteEngine("grpc://gpu-server:8001", model="camvid-b0")   # or "http://gpu-server:8000"
    mask = engine.infer(frame)             # same calls as Engine: infer, infer_batch, stream, classes, palette

Frames go as uint8 BGR (N, H, W, 3) and masks come back as the server's Engine computed them. Inference is
idempotent, so a call that finds the server unreachable is retried with exponential backoff
(``retries``, ``backoff``); when the server stays gone the call raises :class:`ServerUnavailableError`. A
request the server refused raises the segrt error type the server raised (InputError for a frame of the
wrong size, ...) with the server's message. tritonclient is imported lazily (``pip install segrt[remote]``):
this module imports neither torch nor the serving side. Thread safety: one RemoteEngine may serve many
threads (one client per thread; the connection is reused).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from segrt.runtime.arguments import check_int, check_number, describe
from segrt.runtime.engine import STREAM_OPTIONS, _frame_list
from segrt.runtime.errors import BackendUnavailableError, ConfigError, RemoteError, SegrtError, ServerUnavailableError
from segrt.runtime.frames import as_bgr, frame_size
from segrt.runtime.remote_protocol import (
    ENCODED_SUFFIX,
    FRAME,
    IMAGE,
    INFO_SUFFIX,
    MASK,
    METADATA,
    METADATA_PARAMETER,
    QUERY,
    check_encoded,
    error_from_text,
)

SCHEMES = {"grpc": 8001, "http": 8000}
# tritonclient statuses meaning "not reachable now" (gRPC codes, HTTP gateway codes) and texts of socket errors
# that the HTTP client wraps; a reply naming a segrt error is never one of them.
_UNAVAILABLE_STATUS = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "502", "503", "504")
# "unknown model": a restarted server answers before it has loaded its models; the model existed when this
# client connected (its metadata was read), so a model still missing after the retries is reported as unavailable.
_UNAVAILABLE_TEXT = ("failed to connect", "Connection refused", "Socket closed", "Broken pipe", "Connection reset",
                     "timed out", "Deadline Exceeded", "Request for unknown model")


def _unavailable(exc: Exception) -> bool:
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    if "segrt " in text and "Error: " in text:
        return False
    status_of = getattr(exc, "status", None)  # tritonclient.utils.InferenceServerException.status()
    status = status_of() if callable(status_of) else None
    return str(status) in _UNAVAILABLE_STATUS or any(s in text for s in _UNAVAILABLE_TEXT)


def _parse(url: str) -> tuple[str, str]:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"url must look like grpc://host:8001 or http://host:8000, got {describe(url)}")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(f"url {url!r}: scheme must be grpc or http and a host is needed")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError as exc:
        raise ConfigError(f"url {url!r}: {exc}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


class RemoteEngine:
    def __init__(self, url: str = "grpc://127.0.0.1:8001", model: str = "camvid-b0", *, timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, max_batch: int = 8):
        self.scheme, self.address = _parse(url)
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be the served model's name, got {describe(model)}")
        self.url, self.model = url, model
        self.timeout = float(check_number(timeout, "timeout", above=0))  # type: ignore[arg-type]
        self.retries = int(check_int(retries, "retries", minimum=0, maximum=100))  # type: ignore[arg-type]
        self.backoff = float(check_number(backoff, "backoff", minimum=0))  # type: ignore[arg-type]
        self.max_batch = int(check_int(max_batch, "max_batch", minimum=1, maximum=4096))  # type: ignore[arg-type]
        self._lib = self._import()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.info: dict = self._call(self._fetch_info, "metadata")
        self.mask_dtype = np.dtype(self.info.get("mask_dtype", "uint8")).type

    # ------------------------------------------------------------------ description (as Engine)
    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.info["palette"]]  # type: ignore[misc]

    @property
    def input_size(self) -> tuple[int, int] | None:
        size = self.info.get("input_size")
        return (int(size[0]), int(size[1])) if size else None

    @property
    def backend_name(self) -> str:
        return f"triton:{self.scheme}"

    def __repr__(self) -> str:
        return f"RemoteEngine({self.url!r}, model={self.model!r}, classes={len(self.classes)})"

    # ------------------------------------------------------------------ transport
    def _import(self) -> Any:
        try:
            if self.scheme == "grpc":
                import tritonclient.grpc as lib
            else:
                import tritonclient.http as lib
        except ImportError as exc:
            raise BackendUnavailableError(f"RemoteEngine needs tritonclient ({exc}); install segrt[remote]") from exc
        return lib

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.scheme == "grpc":
                client = self._lib.InferenceServerClient(self.address)
            else:
                client = self._lib.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                                         network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001, S110 - a broken connection may fail to close; it is dropped anyway
                pass

    def _call(self, fn: Any, what: str) -> Any:
        """``fn()`` with retries and backoff while the server is unreachable; typed errors otherwise."""
        delay, last = self.backoff, ""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except SegrtError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a typed error below
                if not _unavailable(exc):
                    raise error_from_text(str(exc)) from None
                last = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                self._drop_client()
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise ServerUnavailableError(f"{self.url} (model {self.model!r}) is unreachable for {what} after "
                                     f"{self.retries + 1} attempt(s): {last}")

    def _infer(self, model: str, name: str, array: np.ndarray, dtype: str, output: str) -> np.ndarray:
        client = self._client()
        tensor = self._lib.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        if self.scheme == "grpc":
            result = client.infer(model, [tensor], client_timeout=self.timeout)
        else:
            result = client.infer(model, [tensor])
        out = result.as_numpy(output)
        if out is None:
            raise RemoteError(f"server: model {model!r} returned no {output!r}")
        return out

    def _fetch_info(self) -> dict:
        client = self._client()
        kwargs = {"client_timeout": self.timeout} if self.scheme == "grpc" else {}
        if not client.is_model_ready(self.model, **kwargs):  # loading, or not served: retried, then unavailable
            raise ConnectionError(f"model {self.model!r} is not ready on {self.url}")
        config = client.get_model_config(self.model, as_json=True, **kwargs) if kwargs else \
            client.get_model_config(self.model)  # the HTTP client returns JSON already
        config = config.get("config", config)
        parameter = (config.get("parameters") or {}).get(METADATA_PARAMETER)
        if parameter:  # a repository written by `segrt export-triton`
            return json.loads(parameter["string_value"])
        if not client.is_model_ready(self.model + INFO_SUFFIX, **kwargs):  # `segrt serve` loads it last
            raise ConnectionError(f"model {self.model + INFO_SUFFIX!r} is not ready on {self.url}")
        reply = self._infer(self.model + INFO_SUFFIX, QUERY, np.zeros(1, np.uint8), "UINT8", METADATA)
        return json.loads(bytes(reply.reshape(-1)[0]))

    # ------------------------------------------------------------------ inference (as Engine)
    def infer(self, frame: np.ndarray) -> np.ndarray:
        """One BGR uint8 frame -> label mask, computed on the server."""
        frame_size(frame, "frame")
        return self.infer_batch([frame])[0]

    def infer_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Several frames -> one mask each; frames of one size go as one request (up to ``max_batch``)."""
        items = _frame_list(frames)
        for i, f in enumerate(items):
            frame_size(f, f"frames[{i}]")
        bgr = [as_bgr(f, f"frames[{i}]") for i, f in enumerate(items)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(bgr):
            groups.setdefault(f.shape[:2], []).append(i)
        masks: list[np.ndarray | None] = [None] * len(items)
        for idx in groups.values():
            for start in range(0, len(idx), self.max_batch):
                chunk = idx[start : start + self.max_batch]
                batch = np.stack([bgr[i] for i in chunk])
                out = self._call(lambda b=batch: self._infer(self.model, FRAME, b, "UINT8", MASK), "infer")
                for i, m in zip(chunk, out):
                    masks[i] = m
        return masks  # type: ignore[return-value]

    def infer_encoded(self, data: bytes) -> np.ndarray:
        """A JPEG or PNG file's bytes -> mask, decoded on the server (less to send than raw pixels)."""
        if not isinstance(data, (bytes, bytearray)):
            raise ConfigError(f"data must be the bytes of a JPEG or PNG file, got {describe(data)}")
        check_encoded(bytes(data), "image")  # refused here already: nothing oversized is sent
        array = np.array([bytes(data)], dtype=object)
        out = self._call(lambda: self._infer(self.model + ENCODED_SUFFIX, IMAGE, array, "BYTES", MASK), "infer")
        return out[0]

    def stream(self, source: Any, **options: Any) -> Any:
        """As :meth:`Engine.stream`: capture, remote inference and rendering overlapped in threads."""
        from segrt.runtime.stream import Stream

        unknown = sorted(set(options) - STREAM_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown stream option(s) {', '.join(map(repr, unknown))}; expected some of "
                              f"{', '.join(sorted(STREAM_OPTIONS))}")
        # Stream calls only engine.infer, which this class has with Engine's signature.
        return Stream(self, source, **options)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead connection
                pass
        self._local = threading.local()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
