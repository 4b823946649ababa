"""Colour a label mask onto a frame, with an optional class legend."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def palette_lut(palette_rgb: Sequence[Sequence[int]]) -> np.ndarray:
    """256x3 BGR lookup table: label -> colour (labels past the palette are black)."""
    lut = np.zeros((256, 3), np.uint8)
    for i, (r, g, b) in enumerate(list(palette_rgb)[:256]):
        lut[i] = (b, g, r)
    return lut


def colorize(mask: np.ndarray, palette_rgb: Sequence[Sequence[int]]) -> np.ndarray:
    return palette_lut(palette_rgb)[mask]


def overlay(frame: np.ndarray, mask: np.ndarray, palette_rgb: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured mask over a BGR frame; the mask is resized (nearest) if sizes differ."""
    if mask.shape[:2] != frame.shape[:2]:
        mask = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(frame, 1.0 - alpha, colorize(mask, palette_rgb), alpha, 0.0)


def draw_legend(image: np.ndarray, classes: Sequence[str], palette_rgb: Sequence[Sequence[int]],
                present: Sequence[int] | None = None, origin: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Swatch + name per class (only ``present`` ones if given), drawn in place; returns the image."""
    ids = list(present) if present is not None else list(range(len(classes)))
    x, y = origin
    scale = max(0.35, min(image.shape[0], image.shape[1]) / 900)
    row = int(22 * scale / 0.5)
    for i in ids:
        if i >= len(classes):
            continue
        r, g, b = palette_rgb[i]
        cv2.rectangle(image, (x, y), (x + row - 4, y + row - 4), (int(b), int(g), int(r)), -1)
        cv2.putText(image, classes[i], (x + row + 2, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, classes[i], (x + row + 2, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        y += row
    return image
