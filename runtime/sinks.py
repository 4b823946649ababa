"""Where results go: image files, a video file, a folder of label masks, a window.

Every write is checked: a failure raises :class:`OutputError` naming the file, never a bare
``False`` from OpenCV or a raw ``OSError``. Files appear under their final name only when complete:
images and text are written to a hidden temporary file in the same folder and renamed into place
(``os.replace`` is atomic on one file system), and a video is written to a hidden ``.partial`` file
that is checked (it opens and holds every frame written) before it is renamed. So a name a sink
reports (``VideoSink.completed``, ``MaskSink.frames``, the path ``write_image`` returns) is on disk.

Writers are context managers and finish in ``close()``, so a video stopped by Ctrl-C is still a
complete, playable file (MP4 writes its index when the writer is released).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from segrt.runtime.errors import InputError, OutputError
from segrt.runtime.frames import as_bgr

# Containers OpenCV's FFmpeg writes with the mp4v codec (checked: each opens and re-reads exactly).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v")


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


# ---------------------------------------------------------------------------------------------- files
def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def prepare_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents); a file in the way or a folder that cannot be created is an
    :class:`OutputError` naming it."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {_reason(exc)}") from exc
    return path


def _check_target(path: Path, what: str) -> None:
    if path.is_dir():
        raise OutputError(f"cannot write {what} {path}: it is a folder")
    prepare_folder(path.parent, f"folder of {what} {path.name}")


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, renamed into place.

    Not fsync'ed (a mask per frame on an SD card would stall the stream): the file is complete for every
    reader and survives a crash of the process, not necessarily a power cut."""
    path = Path(path)
    _check_target(path, what)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")  # no image suffix: globs never see it
    try:
        with open(temp, "wb") as f:
            f.write(data)  # errors of a buffered write (a full disk) surface here or at close, both caught
        os.replace(temp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from exc
    finally:
        if temp.exists():  # anything but success (also Ctrl-C) leaves no temporary behind
            try:
                temp.unlink()
            except OSError:
                pass
    return path


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write text (a JSON report, ...) atomically; see :func:`write_bytes`."""
    return write_bytes(path, text.encode("utf-8"), what)


def write_image(path: str | Path, image: np.ndarray, what: str = "image") -> Path:
    """Encode ``image`` by the path's suffix (.png, .jpg, ...) and write it atomically; returns the path.

    Label masks may be uint8 or uint16 (PNG keeps 16 bits); colour images are HxWx3 uint8 BGR."""
    path = Path(path)
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise InputError(f"{what} for {path} must be a non-empty numpy array, got {type(image).__name__}")
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", image)
    except cv2.error as exc:
        raise OutputError(f"cannot encode {what} {path} ({image.dtype}, shape {image.shape}): "
                          f"{str(exc).strip().splitlines()[-1]}") from exc
    if not ok:
        raise OutputError(f"cannot encode {what} {path} as {path.suffix or '.png'}")
    return write_bytes(path, encoded.tobytes(), what)


# ---------------------------------------------------------------------------------------------- sinks
class VideoSink:
    """Writes BGR frames to a video file; the size is taken from the first frame, later ones are scaled to it.

    Frames go to a hidden ``.NAME.partial.SUFFIX`` next to the target; ``close()`` releases the writer,
    checks that the file opens and holds every frame written, and renames it into place. ``completed``
    is the final path once that has happened (None before, and when no frame was written)."""

    def __init__(self, path: str | Path, fps: float = 25.0, fourcc: str = "mp4v"):
        # mp4v because OpenCV's pip wheels ship FFmpeg without an H.264 encoder; players, OpenCV and FFmpeg all read it.
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(f"cannot write video {self.path}: the suffix must be one of {', '.join(VIDEO_SUFFIXES)}")
        if not isinstance(fourcc, str) or len(fourcc) != 4:
            raise OutputError(f"cannot write video {self.path}: fourcc must be 4 characters (e.g. mp4v), "
                              f"got {fourcc!r}")
        self.fps = float(fps) if isinstance(fps, (int, float)) and 0 < fps < 1000 else 25.0
        self.fourcc = fourcc
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self.completed: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        _check_target(self.path, "video")

    def write(self, image: np.ndarray) -> None:
        image = as_bgr(image)  # the frame rule of the whole runtime: gray and BGRA become BGR, others refused
        if self._writer is None:
            self.size = (image.shape[1], image.shape[0])
            try:
                writer = cv2.VideoWriter(str(self._partial), cv2.VideoWriter.fourcc(*self.fourcc), self.fps, self.size)
            except cv2.error as exc:
                raise OutputError(f"cannot write video {self.path}: {exc}") from exc
            if not writer.isOpened():
                self._discard()
                raise OutputError(f"cannot write video {self.path} with codec {self.fourcc} "
                                  f"(is its folder writable and the suffix a container such as .mp4?)")
            self._writer = writer
        if (image.shape[1], image.shape[0]) != self.size:  # a camera reconnected at another resolution
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        # Counted before the call: CPython raises a pending KeyboardInterrupt right after a call returns,
        # so counting afterwards would miss a frame that is already in the file.
        self.frames += 1
        try:
            self._writer.write(image)
        except cv2.error as exc:
            self.frames -= 1
            raise OutputError(f"cannot write frame {self.frames} to video {self.path}: {exc}") from exc
        except Exception:
            self.frames -= 1
            raise

    def close(self) -> Path | None:
        """Finish the file and move it into place; returns the completed path (None if no frame was written)."""
        if self._writer is None:
            return self.completed
        writer, self._writer = self._writer, None
        writer.release()
        found = _count_frames(self._partial)
        if found is None or found < self.frames:
            self._discard()
            held = "cannot be read back" if found is None else f"holds {found} of the {self.frames} frames written"
            raise OutputError(f"video {self.path} is incomplete: the file {held} (disk full or folder removed?)")
        try:
            os.replace(self._partial, self.path)
        except OSError as exc:
            self._discard()
            raise OutputError(f"cannot write video {self.path}: {_reason(exc)}") from exc
        self.completed = self.path
        return self.completed

    def _discard(self) -> None:
        try:
            self._partial.unlink(missing_ok=True)
        except OSError:
            pass

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count_frames(path: Path) -> int | None:
    """Frames a finished video file declares (its index), or None if it does not open."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


class MaskSink:
    """One single-channel PNG of class indexes per frame, named by the frame's index in the source.

    ``frames`` counts the masks that are complete on disk."""

    def __init__(self, folder: str | Path):
        self.folder = prepare_folder(folder, "mask folder")
        self.frames = 0

    def write(self, index: int, mask: np.ndarray) -> Path:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise InputError(f"mask index must be a non-negative integer, got {index!r}")
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
            shape = getattr(mask, "shape", None)
            raise InputError(f"mask must be an HxW uint8 or uint16 array, got {type(mask).__name__} {shape}")
        path = self.folder / f"{int(index):06d}.png"
        self.frames += 1  # before the call, as in VideoSink.write: Ctrl-C cannot land between write and count
        try:
            write_image(path, mask, "mask")
        except BaseException:
            if not path.exists():
                self.frames -= 1
            raise
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
        try:
            cv2.imshow(self.title, image)
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), ord("Q"), 27):
                return False
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error as exc:
            raise OutputError(f"cannot show a frame in window {self.title!r}: {exc}") from exc

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass

    def __enter__(self) -> Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
