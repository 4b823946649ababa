"""Frame -> network input and network output -> label mask, vectorised with numpy and OpenCV.

Shared by the runtime, evaluation and training so that the model sees identical pixels everywhere.
Masks are uint8 for models of up to 256 classes and uint16 above (never a wrapped label).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segrt.runtime.errors import BackendError, ModelLoadError

CV_MAX_CHANNELS = 128  # channels OpenCV's Python binding passes to one resize (OpenCV 5; 512 in 4.x)
# Bytes of upsampled float32 logits held at once. Beyond it, or beyond CV_MAX_CHANNELS, the logits are
# upsampled a few channels at a time and reduced to a running argmax, so memory stays bounded whatever
# K and the frame size are. Within it the logits are upsampled in one call: OpenCV rounds differently
# for different channel counts (up to ~3e-5), and one call keeps every mask identical to earlier releases.
UPSAMPLE_BUDGET = 1 << 30


def mask_dtype(num_classes: int) -> type[np.unsignedinteger]:
    """uint8 for up to 256 classes, uint16 up to 65536; more cannot be represented in a mask."""
    if num_classes <= 256:
        return np.uint8
    if num_classes <= 65536:
        return np.uint16
    raise ModelLoadError(f"a model with {num_classes} classes cannot be given a mask (at most 65536 classes)")


def normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Scale and offset, per RGB channel, that map uint8 pixels to the network's normalised input."""
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
    offset = -np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
    return scale, offset


def frames_to_input(
    frames: Sequence[np.ndarray], size: tuple[int, int] | None, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """BGR uint8 HxWx3 frames -> float32 (N, 3, H, W) normalised RGB at ``size`` (H, W).

    With ``size`` None each frame keeps its own size, so all frames must share one.
    """
    scale, offset = normalisation(mean, std)
    batch = []
    for frame in frames:
        if size is not None and frame.shape[:2] != tuple(size):
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        batch.append(frame[:, :, ::-1])  # BGR -> RGB as a view; the stack below copies once
    x = np.stack(batch).astype(np.float32)
    x = x * scale + offset
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def logits_to_mask(logits: np.ndarray, out_hw: tuple[int, int], dtype: type[np.unsignedinteger] | None = None,
                   ) -> np.ndarray:
    """(K, h, w) logits -> (H, W) labels: bilinear upsampling of the logits, then argmax.

    Upsampling logits (not labels) keeps boundaries sub-pixel accurate; it is what training and the
    reference evaluation do. ``dtype`` defaults to :func:`mask_dtype` of K. NaN logits (a broken model
    or input) raise :class:`BackendError` instead of becoming an arbitrary label.
    """
    k, h, w = logits.shape
    dtype = dtype or mask_dtype(k)
    if np.isnan(logits).any():
        raise BackendError(f"the model returned NaN logits ({int(np.isnan(logits).sum())} of {logits.size} values)")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if (h, w) == (out_h, out_w):
        return logits.argmax(0).astype(dtype)
    hwk = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    step = max(1, min(CV_MAX_CHANNELS, k, UPSAMPLE_BUDGET // (4 * out_h * out_w)))
    if step == k:  # one call: the plain argmax
        up = np.atleast_3d(cv2.resize(hwk, (out_w, out_h), interpolation=cv2.INTER_LINEAR))
        return up.argmax(2).astype(dtype)
    # Chunks of channels; a strict ">" keeps np.argmax's first-maximum rule across chunks.
    best_value: np.ndarray | None = None
    best_label = np.zeros((out_h, out_w), dtype=dtype)
    for start in range(0, k, step):
        up = np.atleast_3d(cv2.resize(hwk[:, :, start : start + step], (out_w, out_h), interpolation=cv2.INTER_LINEAR))
        value, label = up.max(2), up.argmax(2) + start
        if best_value is None:
            best_value, best_label[:] = value, label
        else:
            better = value > best_value
            best_value[better], best_label[better] = value[better], label[better]
    return best_label


def labels_to_mask(labels: np.ndarray, out_hw: tuple[int, int], dtype: type[np.unsignedinteger] | None = None,
                   num_classes: int | None = None) -> np.ndarray:
    """(h, w) integer labels -> (H, W) labels by nearest-neighbour resizing.

    With ``num_classes`` given, a label outside 0..num_classes-1 (a model whose output is not what its
    metadata says) raises :class:`BackendError` rather than being cast into a valid-looking mask.
    """
    if labels.dtype.kind not in "iu":
        raise BackendError(f"the model returned labels of dtype {labels.dtype}; expected integers")
    if num_classes is not None and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise BackendError(f"the model returned label {low if low < 0 else high}, outside 0..{num_classes - 1} "
                               f"for its {num_classes} classes")
    dtype = dtype or (mask_dtype(num_classes) if num_classes is not None else np.uint8)
    labels = labels.astype(dtype)
    if labels.shape == (int(out_hw[0]), int(out_hw[1])):
        return labels
    return cv2.resize(labels, (int(out_hw[1]), int(out_hw[0])), interpolation=cv2.INTER_NEAREST)
