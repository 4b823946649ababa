"""What a segrt model served on Triton looks like on the wire: model and tensor names, the metadata reply and
how a segrt error travels as a Triton error. Shared by the server (:mod:`segrt.serving`) and the client
(:class:`segrt.runtime.remote.RemoteEngine`); here in the runtime because the client is, and the runtime
imports nothing from the serving side.

Models served for a segrt model named ``NAME``:

- ``NAME``: input ``frame`` UINT8 (N, H, W, 3) BGR, output ``mask`` UINT8 (UINT16 above 256 classes) (N, Hm, Wm).
  Dynamic batching: Triton batches only requests of the same shape, so a batch holds frames of one size.
- ``NAME_encoded``: input ``image`` BYTES (N, 1), a JPEG or PNG file each, decoded on the server after its
  header passed the frame bounds; output ``mask`` as above (the images of one request share a size).
- ``NAME_info``: input ``query`` UINT8 (1,), output ``metadata`` BYTES (1,): the JSON of :func:`info`.

A model exported by ``segrt export-triton`` carries the same JSON in its config.pbtxt parameter
:data:`METADATA_PARAMETER` instead of an ``_info`` model.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from segrt.runtime import errors
from segrt.runtime.errors import InputError, RemoteError, SegrtError

FRAME = "frame"
MASK = "mask"
IMAGE = "image"
QUERY = "query"
METADATA = "metadata"
ENCODED_SUFFIX = "_encoded"
INFO_SUFFIX = "_info"
METADATA_PARAMETER = "segrt_metadata"
MAX_ENCODED_BYTES = 64 << 20  # a JPEG/PNG over 64 MB is not a camera frame

# "segrt InputError: frames[0] ..." inside whatever Triton wraps around an error message.
_ERROR = re.compile(r"segrt ([A-Za-z]+Error): ([^\n]*)")


def error_text(exc: SegrtError) -> str:
    """How the server words a segrt error so that the client can raise the same type (:func:`error_from_text`)."""
    return f"segrt {type(exc).__name__}: {exc}"


def error_from_text(text: str) -> SegrtError:
    """The typed segrt error a server reply names, or :class:`RemoteError` carrying the server's message."""
    matches = _ERROR.findall(text)  # the last one: a traceback may quote the raising line first
    if matches:
        name, message = matches[-1]
        kind = getattr(errors, name, None)
        message = message.strip().rstrip("'\"").strip()
        if isinstance(kind, type) and issubclass(kind, SegrtError):
            return kind(f"server: {message}")
    return RemoteError(f"server: {' '.join(text.split())[:2000]}")


def info(metadata: Any, mask_dtype: Any) -> dict:
    """The metadata reply: what a client needs to stand in for a local Engine."""
    return {"classes": list(metadata.classes), "palette": [list(c) for c in metadata.palette],
            "mask_dtype": str(getattr(mask_dtype, "__name__", mask_dtype)), "form": metadata.form,
            "input_size": list(metadata.input_size) if metadata.input_size else None,
            "frame_size": list(metadata.frame_size) if metadata.frame_size else None,
            "output_stride": metadata.output_stride}


def info_json(metadata: Any, mask_dtype: Any) -> str:
    return json.dumps(info(metadata, mask_dtype), separators=(",", ":"))


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header in memory, as image_header reads a file's."""
    from segrt.runtime import image_header

    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return image_header._png(head)
    if head.startswith(b"\xff\xd8"):
        return image_header._jpeg(io.BytesIO(data))
    if head.startswith(b"BM"):
        return image_header._bmp(head)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return image_header._webp(head)
    return None


def check_encoded(data: bytes, name: str) -> None:
    """InputError naming ``name`` for an encoded image that is too big, or whose header declares too many pixels."""
    from segrt.runtime.frames import MAX_PIXELS, MAX_SIDE

    if len(data) > MAX_ENCODED_BYTES:
        raise InputError(f"{name} has {len(data)} bytes, more than the limit of {MAX_ENCODED_BYTES}")
    size = encoded_size(data)
    if size is None:
        if not data.startswith((b"\x89PNG", b"\xff\xd8", b"BM", b"RIFF")):
            raise InputError(f"{name} is not a JPEG, PNG, BMP or WebP image ({len(data)} bytes)")
        return
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InputError(f"{name} of {width}x{height} exceeds the {MAX_SIDE}-pixel side limit")
    if width * height > MAX_PIXELS:
        raise InputError(f"{name} of {width}x{height} has {width * height} pixels, more than the limit of {MAX_PIXELS}")
