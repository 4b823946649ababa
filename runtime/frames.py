"""Validate and normalise incoming frames to HxWx3 uint8 BGR.

Rules (documented in README.md, "Guarantees"):
- numpy ``uint8`` arrays only: other dtypes raise :class:`InputError` (scaling float or 16-bit images is
  the caller's call; NaN cannot occur in uint8).
- HxW (grayscale) and HxWx1 are replicated to three channels; HxWx4 (BGRA) drops alpha; HxWx3 is BGR.
- Any strides or views are accepted; the frame is never modified.
- Each side 1..MAX_SIDE pixels and at most MAX_PIXELS pixels in all. The bounds are checked from the
  shape alone, before anything is allocated (no copy, no OpenCV call), so an oversized frame costs nothing.
"""

from __future__ import annotations

import cv2
import numpy as np

from segrt.runtime.arguments import describe
from segrt.runtime.errors import InputError

MAX_SIDE = 8192
# 2**25 = 33,554,432 pixels: 8192x4096, or 8K UHD (7680x4320). The mask's upsampled logits are
# processed in bounded chunks (preprocess.logits_to_mask), so a frame at the bound needs about 1 GB.
MAX_PIXELS = 1 << 25
CHANNELS = (1, 3, 4)


def frame_size(frame: object, name: str = "frame") -> tuple[int, int, int]:
    """(H, W, channels) of a frame that passes every rule above; raises InputError naming ``name``.

    Reads only the array's header (type, dtype, shape): nothing is copied or converted.
    """
    if not isinstance(frame, np.ndarray):
        raise InputError(f"{name} must be a numpy array (HxWx3 uint8 BGR), got {describe(frame)}")
    if frame.dtype != np.uint8:
        raise InputError(f"{name} dtype is {frame.dtype}; expected uint8 (HxWx3 BGR as OpenCV delivers); "
                         "scale other images to 0..255 uint8 first")
    if frame.ndim == 2:
        channels = 1
    elif frame.ndim == 3:
        channels = int(frame.shape[2])
    else:
        raise InputError(f"{name} has shape {frame.shape} ({frame.ndim} dimensions); "
                         "expected HxWx3 (or HxW grayscale, HxWx4 BGRA)")
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if h == 0 or w == 0:
        raise InputError(f"{name} is empty (shape {frame.shape})")
    if channels not in CHANNELS:
        raise InputError(f"{name} has {channels} channels (shape {frame.shape}); expected 3 (BGR), 1 or 4")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise InputError(f"{name} of {w}x{h} exceeds the {MAX_SIDE}-pixel side limit")
    if h * w > MAX_PIXELS:
        raise InputError(f"{name} of {w}x{h} has {h * w} pixels, more than the limit of {MAX_PIXELS}")
    return h, w, channels


def as_bgr(frame: object, name: str = "frame") -> np.ndarray:
    """The frame as a C-contiguous HxWx3 uint8 BGR array (the caller's array itself when it already is one)."""
    h, w, channels = frame_size(frame, name)
    assert isinstance(frame, np.ndarray)  # frame_size checked it; tells the type checker
    frame = np.ascontiguousarray(frame)
    if channels == 1:
        return cv2.cvtColor(frame.reshape(h, w), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame
