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

import math
import os
import stat
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from segrt.runtime.arguments import check_instance, describe
from segrt.runtime.errors import ConfigError, InputError, OutputError
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
MAX_NAME_BYTES = 255  # one path component on ext4, XFS, btrfs, NTFS, FAT (larger names fail only at open time)
WRITABLE_DTYPES = {np.dtype(np.uint8): None, np.dtype(np.uint16): (".png", ".tif", ".tiff", ".jp2")}


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def output_path(path: object, what: str = "file") -> Path:
    """``path`` as a Path that can name a file, or an :class:`OutputError` saying why not: not a str or
    PathLike, a NUL character, characters the file system encoding cannot hold, a component too long."""
    try:
        result = Path(path)  # type: ignore[arg-type]
    except TypeError:
        raise OutputError(f"the {what} path must be a str or pathlib.Path, got {describe(path)}") from None
    text = str(result)
    if text in ("", "."):
        raise OutputError(f"the {what} path is empty")
    if "\0" in text:
        raise OutputError(f"cannot write {what} {text!r}: the path contains a NUL character")
    try:
        encoded = [os.fsencode(part) for part in result.parts]
    except UnicodeEncodeError:
        raise OutputError(f"cannot write {what} {text!r}: the path has characters the file system "
                          f"encoding ({sys.getfilesystemencoding()}) cannot store") from None
    if any(len(part) > MAX_NAME_BYTES for part in encoded):
        raise OutputError(f"cannot write {what} {text[:80]}...: a name in the path is longer than "
                          f"{MAX_NAME_BYTES} bytes")
    return result


@contextmanager
def writing(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn an ``OSError`` of the block (a library's own save: onnx, torch, shutil) into an
    :class:`OutputError` naming ``path``, so every failed write reads the same way."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from exc


def _why_no_folder(path: Path) -> str | None:
    """Create ``path`` and its parents; None when done, else why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        return None
    except (FileExistsError, NotADirectoryError):  # a file (or a link to one) holds a name on the way
        for step in reversed([path, *path.parents]):
            try:
                if step.exists() and not step.is_dir():
                    return f"{step} is a file, not a folder"
            except OSError:
                break
        return f"{path} exists and is not a folder"
    except OSError as exc:
        return f"cannot create {path}: {_reason(exc)}"


def prepare_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents); a file in the way or a folder that cannot be created is an
    :class:`OutputError` naming it. ``"."`` (the folder of a bare file name such as ``-o model.onnx``) is the
    working folder."""
    path = Path(".") if isinstance(folder, (str, Path)) and str(folder) == "." else output_path(folder, what)
    why = _why_no_folder(path)
    if why is not None:
        raise OutputError(f"{what} {path}: {why}")
    return path


def _check_target(path: Path, what: str) -> None:
    """The name may be new or a regular file (replaced); a folder, device, FIFO or socket is refused: renaming
    over ``/dev/full`` would replace the device node itself with a regular file. Creates the folder."""
    try:
        mode: int | None = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # nothing there (a file in the way of a folder is reported below)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from exc
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"cannot write {what} {path}: it is a folder")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"cannot write {what} {path}: it exists and is not a regular file (a device, FIFO "
                          f"or socket)")
    why = _why_no_folder(path.parent)
    if why is not None:
        raise OutputError(f"cannot write {what} {path}: {why}")


def write_bytes(path: str | Path, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, renamed into place.

    Not fsync'ed (a mask per frame on an SD card would stall the stream): the file is complete for every
    reader and survives a crash of the process, not necessarily a power cut."""
    path = output_path(path, what)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"the data for {what} {path} must be bytes, got {describe(data)}")
    _check_target(path, what)
    # A short hidden name, whatever the length of the target's (a 255-byte name must stay writable); no image
    # suffix, so globs never see it; pid and a random part, so concurrent writers never share it.
    temp = path.with_name(f".segrt-{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")
    done = False
    try:
        with open(temp, "wb") as f:
            f.write(data)  # errors of a buffered write (a full disk) surface here or at close, both caught
        os.replace(temp, path)
        done = True
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {_reason(exc)}") from exc
    finally:
        if not done:  # anything but success (also Ctrl-C) leaves no temporary behind
            try:
                temp.unlink()
            except OSError:  # never created, or the folder went away: nothing to clean, keep the first error
                pass
    return path


def write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write text (a JSON report, ...) as UTF-8, atomically; see :func:`write_bytes`."""
    path = output_path(path, what)
    check_instance(text, f"the text of {what} {path}", str, error=InputError)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from a file name decoded with surrogateescape
        raise InputError(f"the text of {what} {path} cannot be encoded as UTF-8: {exc.reason} at "
                         f"character {exc.start}") from None
    return write_bytes(path, data, what)


def write_image(path: str | Path, image: np.ndarray, what: str = "image") -> Path:
    """Encode ``image`` by the path's suffix (.png, .jpg, ...) and write it atomically; returns the path.

    Images are uint8 (colour: HxWx3 BGR); uint16 label masks only to formats that keep 16 bits (.png, .tif,
    .jp2). Other dtypes (float, int32, bool) and uint16 to .jpg are refused: OpenCV would silently convert
    them to 8 bits, i.e. write a different image."""
    path = output_path(path, what)
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise InputError(f"{what} for {path} must be a non-empty numpy array, got {describe(image)}")
    suffix = path.suffix.lower() or ".png"
    if image.dtype not in WRITABLE_DTYPES:
        raise InputError(f"{what} for {path} must be uint8 (or uint16 for a 16-bit format), got {image.dtype}: "
                         f"convert it explicitly")
    sixteen_bit = WRITABLE_DTYPES[image.dtype]
    if sixteen_bit is not None and suffix not in sixteen_bit:
        raise InputError(f"{what} for {path} is {image.dtype}, which {suffix} cannot store: use one of "
                         f"{', '.join(sixteen_bit)} or convert it to uint8")
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

    Frames go to a hidden ``.segrt-PID-RANDOM.partial.SUFFIX`` next to the target; ``close()`` releases the writer,
    checks that the file opens and holds every frame written, and renames it into place. ``completed``
    is the final path once that has happened (None before, and when no frame was written)."""

    def __init__(self, path: str | Path, fps: float = 25.0, fourcc: str = "mp4v"):
        # mp4v because OpenCV's pip wheels ship FFmpeg without an H.264 encoder; players, OpenCV and FFmpeg all read it.
        self.path = output_path(path, "video")
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise OutputError(f"cannot write video {self.path}: the suffix must be one of {', '.join(VIDEO_SUFFIXES)}")
        if not isinstance(fourcc, str) or len(fourcc) != 4:
            raise OutputError(f"cannot write video {self.path}: fourcc must be 4 characters (e.g. mp4v), "
                              f"got {fourcc!r}")
        rate: object = fps  # typed as a float, but callers pass what a source's header says
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise ConfigError(f"fps of video {self.path} must be a number, got {describe(rate)}")
        # A number out of range falls back to 25: it usually comes from a source's header (0, NaN, 90000
        # from a broken stream), and a playable file beats a refused one.
        self.fps = float(rate) if math.isfinite(rate) and 0 < rate < 1000 else 25.0
        self.fourcc = fourcc
        self.frames = 0
        self.size: tuple[int, int] | None = None  # (width, height)
        self.completed: Path | None = None
        self._writer: cv2.VideoWriter | None = None
        # Short, whatever the target's length (see write_bytes); the container suffix tells FFmpeg the format.
        self._partial = self.path.with_name(f".segrt-{os.getpid()}-{uuid.uuid4().hex[:12]}.partial{self.path.suffix}")
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
