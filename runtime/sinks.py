"""Where streamed results go: a video file, a folder of label masks, a window.

Writers are context managers and release in ``close()``, so a video stopped by Ctrl-C is still a
complete, playable file (MP4 writes its index when the writer is released).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from segrt.runtime.errors import OutputError


@lru_cache(maxsize=1)
def gui_available() -> bool:
    """True when OpenCV can open a window here: built with a GUI (the -headless wheels are not) and,
    on Linux, a display to draw on."""
    for line in cv2.getBuildInformation().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "GUI" and value.strip().upper() in ("NONE", "NO", ""):
            return False
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("segrt-probe", cv2.WINDOW_NORMAL)
        cv2.destroyWindow("segrt-probe")
        return True
    except cv2.error:
        return False


class VideoSink:
    """Writes BGR frames to a video file; the size is taken from the first frame, later ones are scaled to it."""

    def __init__(self, path: str | Path, fps: float = 25.0, fourcc: str = "mp4v"):
        # mp4v because OpenCV's pip wheels ship FFmpeg without an H.264 encoder; players, OpenCV and FFmpeg all read it.
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 25.0
        self.fourcc = fourcc
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self._writer: cv2.VideoWriter | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, self.size)
            if not self._writer.isOpened():
                self._writer = None
                raise OutputError(f"cannot write video {self.path} with codec {self.fourcc} (is the suffix .mp4/.avi?)")
        if (image.shape[1], image.shape[0]) != self.size:  # a camera reconnected at another resolution
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        # Counted before the call: CPython raises a pending KeyboardInterrupt right after a call returns,
        # so counting afterwards would miss a frame that is already in the file.
        self.frames += 1
        try:
            self._writer.write(image)
        except Exception:
            self.frames -= 1
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MaskSink:
    """One single-channel PNG of class indexes per frame, named by the frame's index in the source."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, index: int, mask: np.ndarray) -> Path:
        path = self.folder / f"{index:06d}.png"
        self.frames += 1  # before the call, as in VideoSink.write: Ctrl-C cannot land between write and count
        try:
            written = cv2.imwrite(str(path), mask)
        except cv2.error:
            written = False
        if not written:
            self.frames -= 1
            raise OutputError(f"cannot write mask {path}")
        return path

    def close(self) -> None:
        """Nothing is buffered: each mask is complete once ``write`` returns."""

    def __enter__(self) -> MaskSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Window:
    """An OpenCV window; ``show`` returns False once the user pressed q or Esc or closed the window."""

    def __init__(self, title: str = "segrt"):
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise OutputError(f"cannot open a window ({exc}); run headless and write a video instead") from exc

    def show(self, image: np.ndarray) -> bool:
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), ord("Q"), 27):
            return False
        return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
