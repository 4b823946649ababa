"""What a live view shows: the mask blended over the frame, a legend of the classes in view, and a
heads-up display of throughput, latency and dropped frames.

    renderer = OverlayRenderer.for_engine(engine)
    with engine.stream("0", render=renderer) as stream:
        for result in stream:
            cv2.imshow("segrt", result.image)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segrt.runtime.overlay import check_alpha, checked_palette, draw_legend, overlay

if TYPE_CHECKING:
    from segrt.runtime.engine import Engine
    from segrt.runtime.stream import StreamResult, StreamStats


def hud_lines(stats: StreamStats) -> list[str]:
    lines = [f"{stats.recent_fps:.1f} FPS", f"latency {stats.latency_ms(50):.0f} ms (p95 {stats.latency_ms(95):.0f})",
             f"inference {stats.infer_ms(50):.0f} ms"]
    if stats.dropped:
        lines.append(f"dropped {stats.dropped}")
    if stats.reconnects:
        lines.append(f"reconnects {stats.reconnects}")
    return lines


def draw_hud(image: np.ndarray, lines: Sequence[str], margin: int = 8) -> np.ndarray:
    """White text on a darkened box in the bottom-left corner, drawn in place; returns the image."""
    if not lines:
        return image
    scale = max(0.4, min(image.shape[0], image.shape[1]) / 700)
    thickness = 1 if scale < 0.8 else 2
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0] for line in lines]
    row = max(h for _, h in sizes) + int(8 * scale / 0.5)
    width = max(w for w, _ in sizes) + 2 * margin
    height = row * len(lines) + margin
    y0, x1 = max(0, image.shape[0] - height - margin), min(image.shape[1], margin + width)
    box = image[y0 : y0 + height, margin:x1]
    box[:] = (box * 0.35).astype(np.uint8)  # darken rather than cover, so the scene stays visible
    for i, line in enumerate(lines):
        y = y0 + (i + 1) * row
        cv2.putText(image, line, (2 * margin, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return image


class OverlayRenderer:
    """Stream render function: overlay(alpha) + legend of the classes present + HUD."""

    def __init__(self, classes: Sequence[str], palette_rgb: Sequence[Sequence[int]], alpha: float = 0.5,
                 legend: bool = True, hud: bool = True):
        self.classes = list(classes)
        self.palette = checked_palette(palette_rgb)  # a bad colour fails here, not on the first frame
        self.alpha = check_alpha(alpha)
        self.legend = legend
        self.hud = hud

    @classmethod
    def for_engine(cls, engine: Engine, **options) -> OverlayRenderer:
        return cls(engine.classes, engine.palette, **options)

    def __call__(self, result: StreamResult, stats: StreamStats | None = None) -> np.ndarray:
        image = overlay(result.frame, result.mask, self.palette, self.alpha)
        if self.legend:
            present = np.flatnonzero(np.bincount(result.mask.ravel(), minlength=len(self.classes)))
            draw_legend(image, self.classes, self.palette, present.tolist())
        if self.hud and stats is not None:
            draw_hud(image, hud_lines(stats))
        return image
