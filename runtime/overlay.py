"""Colour a label mask onto a frame, with an optional class legend.

Palettes are RGB triples of integers 0..255. An entry outside that range, or not three numbers, is a
:class:`ConfigError` naming the entry (never numpy's OverflowError, never a silently wrapped colour):
model metadata is validated at load, and these functions also take palettes from callers.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from segrt.runtime.errors import ConfigError


def _colour(index: int, entry: object) -> tuple[int, int, int]:
    values = list(entry) if isinstance(entry, (list, tuple, np.ndarray)) else []
    numbers = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    if len(values) != 3 or not numbers or any(float(v) != int(v) for v in values if np.isfinite(v)):
        raise ConfigError(f"palette entry {index} is {entry!r}; expected three integers (R, G, B)")
    if not all(np.isfinite(v) and 0 <= v <= 255 for v in values):
        raise ConfigError(f"palette entry {index} is {entry!r}; colour values must be in 0..255")
    r, g, b = (int(v) for v in values)
    return r, g, b


def checked_palette(palette_rgb: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    """The palette as (R, G, B) int tuples; a malformed or out-of-range entry is a ConfigError naming it."""
    return [_colour(i, entry) for i, entry in enumerate(palette_rgb)]


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:  # refuses NaN
        raise ConfigError(f"overlay alpha must be a number in 0..1, got {alpha!r}")
    return float(alpha)


def palette_lut(palette_rgb: Sequence[Sequence[int]], size: int = 256) -> np.ndarray:
    """``size``x3 BGR lookup table: label -> colour (labels past the palette are black)."""
    lut = np.zeros((max(size, 1), 3), np.uint8)
    for i, entry in enumerate(list(palette_rgb)[: len(lut)]):
        r, g, b = _colour(i, entry)
        lut[i] = (b, g, r)
    return lut


def colorize(mask: np.ndarray, palette_rgb: Sequence[Sequence[int]]) -> np.ndarray:
    # uint16 masks (models with more than 255 classes) index past 256: size the table to the mask.
    size = max(256, int(mask.max()) + 1) if mask.size and mask.dtype != np.uint8 else 256
    return palette_lut(palette_rgb, size)[mask]


def overlay(frame: np.ndarray, mask: np.ndarray, palette_rgb: Sequence[Sequence[int]],
            alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured mask over a BGR frame; the mask is resized (nearest) if sizes differ."""
    alpha = check_alpha(alpha)
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
    palette = list(palette_rgb)
    for i in ids:
        if i >= len(classes) or i >= len(palette):
            continue
        r, g, b = _colour(i, palette[i])
        name = str(classes[i])
        cv2.rectangle(image, (x, y), (x + row - 4, y + row - 4), (b, g, r), -1)
        cv2.putText(image, name, (x + row + 2, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, name, (x + row + 2, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y += row
    return image
