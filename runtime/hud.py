"""What a live view shows: the mask blended over the frame, a legend of the classes in view, and a
heads-up display of throughput, latency and dropped frames; for several cameras, each camera's name on its
view and the views tiled in a grid.

    renderer = OverlayRenderer.for_engine(engine)
    with engine.stream("0", render=renderer) as stream:
        for result in stream:
            cv2.imshow("segrt", result.image)

    tiles = Tiler(cameras=4)                       # with engine.stream([src1, ..., src4], render=renderer)
    tiles.update(result.camera.index, result.image)
    cv2.imshow("segrt", tiles.image())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segrt.runtime.arguments import check_int
from segrt.runtime.errors import ConfigError
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


def draw_title(image: np.ndarray, text: str, margin: int = 8) -> np.ndarray:
    """White text on a darkened box in the top-right corner (the legend has the top-left), drawn in place."""
    scale = max(0.4, min(image.shape[0], image.shape[1]) / 700)
    thickness = 1 if scale < 0.8 else 2
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x0, y1 = max(0, image.shape[1] - w - 3 * margin), min(image.shape[0], h + base + 2 * margin)
    box = image[0:y1, x0:]
    box[:] = (box * 0.35).astype(np.uint8)
    cv2.putText(image, text, (x0 + margin, h + margin), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
    return image


class Tiler:
    """The latest view of each of ``cameras`` cameras in one grid image of a fixed size (for a window or a
    video): ``columns`` per row (default: a near-square grid), every tile ``tile_size`` (W, H) (default:
    640x360, scaled down so that the grid is at most ``max_width`` wide; fixed before any view, because which
    camera delivers first is up to the cameras and a video's size is fixed by its first frame). Views keep
    their aspect ratio (letterboxed in black); a camera with no view yet is a black tile."""

    DEFAULT_TILE = (640, 360)

    def __init__(self, cameras: int, columns: int | None = None, tile_size: tuple[int, int] | None = None,
                 max_width: int = 1920):
        check_int(cameras, "cameras", minimum=1)
        self.cameras = cameras
        self.columns = check_int(columns, "columns", minimum=1, optional=True) or math.ceil(math.sqrt(cameras))
        self.rows = math.ceil(cameras / self.columns)
        self.max_width = check_int(max_width, "max_width", minimum=16)
        if tile_size is None:
            tw = min(self.DEFAULT_TILE[0], self.max_width // self.columns)
            tile_size = (max(1, tw), max(1, round(tw * self.DEFAULT_TILE[1] / self.DEFAULT_TILE[0])))
        self.tile_size = tile_size
        self._grid: np.ndarray | None = None

    def update(self, camera: int, image: np.ndarray) -> None:
        """Show ``image`` (HxWx3 uint8) as camera ``camera``'s view."""
        check_int(camera, "camera", minimum=0, maximum=self.cameras - 1)
        tw, th = self.tile_size
        if self._grid is None:
            self._grid = np.zeros((th * self.rows, tw * self.columns, 3), np.uint8)
        scale = min(tw / image.shape[1], th / image.shape[0])
        w, h = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        view = image if (w, h) == image.shape[1::-1] else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        row, col = divmod(camera, self.columns)
        tile = self._grid[row * th : (row + 1) * th, col * tw : (col + 1) * tw]
        tile[:] = 0
        y, x = (th - h) // 2, (tw - w) // 2
        tile[y : y + h, x : x + w] = view

    def image(self) -> np.ndarray:
        """The grid now (a copy); black until the first view arrives."""
        if self._grid is None:
            raise ConfigError("Tiler.image() before any view: call update(camera, image) first")
        return self._grid.copy()


class OverlayRenderer:
    """Stream render function: overlay(alpha) + legend of the classes present + HUD; for a MultiStream's
    results (``result.camera``) also the camera's number and name (``title``)."""

    def __init__(self, classes: Sequence[str], palette_rgb: Sequence[Sequence[int]], alpha: float = 0.5,
                 legend: bool = True, hud: bool = True, title: bool = True):
        self.classes = list(classes)
        self.palette = checked_palette(palette_rgb)  # a bad colour fails here, not on the first frame
        self.alpha = check_alpha(alpha)
        self.legend = legend
        self.hud = hud
        self.title = title

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
        camera = getattr(result, "camera", None)
        if self.title and camera is not None:
            draw_title(image, f"{camera.index}: {camera.name}")
        return image
