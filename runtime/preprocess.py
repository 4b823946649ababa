"""Frame -> network input and network output -> label mask, vectorised with numpy and OpenCV.

Shared by the runtime, evaluation and training so that the model sees identical pixels everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


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


def logits_to_mask(logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(K, h, w) logits -> (H, W) uint8 labels: bilinear upsampling of the logits, then argmax.

    Upsampling logits (not labels) keeps boundaries sub-pixel accurate; it is what training and the
    reference evaluation do.
    """
    k, h, w = logits.shape
    if (h, w) == tuple(out_hw):
        return logits.argmax(0).astype(np.uint8)
    hwk = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    if k > 512:  # OpenCV's channel limit; resize in chunks
        up = np.concatenate(
            [np.atleast_3d(cv2.resize(hwk[:, :, i : i + 512], (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR))
             for i in range(0, k, 512)], axis=2)
    else:
        up = np.atleast_3d(cv2.resize(hwk, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR))
    return up.argmax(2).astype(np.uint8)


def labels_to_mask(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) integer labels -> (H, W) uint8 by nearest-neighbour resizing."""
    labels = labels.astype(np.uint8)
    if labels.shape == tuple(out_hw):
        return labels
    return cv2.resize(labels, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)
