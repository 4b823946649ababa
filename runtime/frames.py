"""Validate and normalise incoming frames to HxWx3 uint8 BGR.

Rules (documented in README "Guarantees"):
- uint8 only: other dtypes raise :class:`InputError` (scaling float or 16-bit images is the caller's call).
- HxW (grayscale) and HxWx1 are replicated to three channels; HxWx4 (BGRA) drops alpha; HxWx3 is BGR.
- Any strides or views are accepted; the frame is never modified.
- Each side must be 1..MAX_SIDE pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from segrt.runtime.errors import InputError

MAX_SIDE = 16384


def as_bgr(frame: object) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise InputError(f"frame must be a numpy array (HxWx3 uint8 BGR), got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"frame dtype is {frame.dtype}; expected uint8 (HxWx3 BGR as OpenCV delivers)")
    if frame.ndim == 2:
        channels = 1
    elif frame.ndim == 3:
        channels = frame.shape[2]
    else:
        raise InputError(f"frame has shape {frame.shape}; expected HxWx3 (or HxW grayscale, HxWx4 BGRA)")
    h, w = frame.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"frame is empty (shape {frame.shape})")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise InputError(f"frame of {w}x{h} exceeds the {MAX_SIDE}-pixel side limit")
    if channels not in (1, 3, 4):
        raise InputError(f"frame has {channels} channels (shape {frame.shape}); expected 3 (BGR), 1 or 4")
    frame = np.ascontiguousarray(frame)
    if channels == 1:
        return cv2.cvtColor(frame.reshape(h, w), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame
