"""Frame sources: cameras, Jetson CSI cameras, network streams, video files, image folders and globs.

    source = open_source("0")                    # first camera (V4L2 on Linux)
    source = open_source("/dev/video1?width=1280&height=720&fps=30")
    source = open_source("csi://0?width=1920&height=1080&fps=30&flip=2")   # Jetson, via GStreamer
    source = open_source("rtsp://10.0.0.5:554/stream")
    source = open_source("drive.mp4")            # or "frames/", "frames/*.png" (sorted: plays as a video)
    while (frame := source.read()) is not None:
        ...

Every source is a :class:`FrameSource`: ``read()`` returns an HxWx3 uint8 BGR frame, or None at the
normal end (files, folders). A *live* source (camera, network stream) never ends that way: when it
stops delivering it raises :class:`SourceDisconnectedError` and can be reopened with ``open()``;
:class:`segrt.runtime.stream.Stream` does that with backoff.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from segrt.runtime.arguments import check_bool, check_int, check_number, describe
from segrt.runtime.datasets import IMAGE_SUFFIXES
from segrt.runtime.errors import ConfigError, SourceDisconnectedError, SourceError
from segrt.runtime.frames import MAX_SIDE, frame_size
from segrt.runtime.image_header import check_image_file

log = logging.getLogger("segrt.sources")
MAX_DECODE_GAP = 64  # consecutive failed reads of a file before its remaining part counts as undecodable
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
MAX_SPEC_CHARS = 4096  # PATH_MAX; longer source strings are refused before any file-system call
MAX_CAMERA_INDEX = 1023
MAX_FPS = 1000
MAX_GLOB_MATCHES = 1_000_000
MAX_GLOB_PARTS = 64
OPTIONS = ("width", "height", "fps", "flip", "fourcc")
SPEC_HELP = ("expected a camera index (0), /dev/videoN, csi://N, an rtsp:// or http:// URL, a video file, "
             "an image folder or a glob")


class FrameSource:
    """Base class of all sources. Subclasses implement ``open``, ``read`` and ``close``."""

    name: str = "source"
    live: bool = False  # frames arrive in real time and cannot be re-read: latest-frame policy, reconnects
    fps: float | None = None  # nominal frame rate, when the source knows it
    frame_count: int | None = None  # frames until the end, for files and folders

    def open(self) -> None:
        """(Re)open the source; raises :class:`SourceError` when it cannot."""
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None at the end. Live sources raise SourceDisconnectedError instead."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.live}, fps={self.fps}, frames={self.frame_count})"


class VideoCaptureSource(FrameSource):
    """Anything ``cv2.VideoCapture`` opens: cameras, GStreamer pipelines, URLs, video files."""

    def __init__(self, name: str, target: int | str, api: int = cv2.CAP_ANY, *, live: bool,
                 properties: dict[int, float] | None = None, hint: str = ""):
        self.name = name
        self.target = target
        self.api = api
        self.live = live
        self.properties = dict(properties or {})
        self.hint = hint
        self._cap: cv2.VideoCapture | None = None
        self.undecodable = 0  # frames of a damaged file the decoder could not produce, known at its end
        self._position = 0
        self.open()

    def open(self) -> None:
        self.close()
        try:
            cap = cv2.VideoCapture(self.target, self.api)
        except cv2.error as exc:
            raise SourceError(f"cannot open {self.name}: {exc}{self.hint}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.name}{self.hint}")
        for prop, value in self.properties.items():
            cap.set(prop, value)  # best effort: drivers ignore what they cannot do
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 and not self.live else None
        self._cap = cap
        self._position = 0

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError(f"{self.name} is closed")
        try:
            ok, frame = self._cap.read()
        except cv2.error as exc:
            raise SourceError(f"{self.name}: reading a frame failed: {exc}") from exc
        if ok and frame is not None:
            self._position += 1
            return frame
        if self.live:
            raise SourceDisconnectedError(f"{self.name} stopped delivering frames")
        return self._skip_damage()

    def _skip_damage(self) -> np.ndarray | None:
        """A file whose decoder fails before its last frame (a damaged stretch) is not at its end:
        OpenCV's next reads often decode again, so read on past up to MAX_DECODE_GAP failed reads instead
        of silently ending the file half way; at the end ``undecodable`` says how many of the file's
        frames could not be decoded."""
        assert self._cap is not None
        if not self.frame_count or self._position >= self.frame_count - 1:
            return None
        for gap in range(1, MAX_DECODE_GAP + 1):
            try:
                ok, frame = self._cap.read()
            except cv2.error:
                ok, frame = False, None
            if ok and frame is not None:
                log.warning("%s: %d undecodable frame(s) before frame %d (damaged file)", self.name, gap,
                            self._position)
                self._position += 1
                return frame
        self.undecodable = self.frame_count - self._position
        log.warning("%s: decoding stopped at frame %d of %d (damaged file)", self.name, self._position,
                    self.frame_count)
        return None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageSequenceSource(FrameSource):
    """Image files read in the given order; a sorted folder of consecutive frames plays as a video."""

    def __init__(self, name: str, paths: list[Path], fps: float | None = None):
        if not paths:
            raise SourceError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.name = name
        self.paths = list(paths)
        self.fps = fps
        self.frame_count = len(self.paths)
        self._next = 0

    def open(self) -> None:
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.paths):
            return None
        path = self.paths[self._next]
        # The header's size first: an oversized image is refused before OpenCV allocates its pixels.
        check_image_file(path, f"frame {self._next} of {self.name} (image {path})")
        try:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # e.g. an image larger than OpenCV's own pixel limit
            raise SourceError(f"{self.name}: cannot read image {path}: {exc}") from exc
        if frame is None:
            raise SourceError(f"{self.name}: cannot read image {path}")
        self._next += 1
        frame_size(frame, f"frame {self._next - 1} of {self.name} (image {path})")  # the frame bounds, naming the file
        return frame

    def close(self) -> None:
        self._next = len(self.paths)


# ---------------------------------------------------------------------------------------------- parsing
@dataclass
class SourceSpec:
    """What a source string means, before anything is opened."""

    kind: str  # camera, csi, gstreamer, url, video, images
    target: Any  # camera index or device path, pipeline string, URL, file path, list of image paths
    options: dict[str, str] = field(default_factory=dict)


def natural_key(path: str | Path) -> tuple:
    """``frame2`` before ``frame10``; the regex split alternates text and numbers so tuples always compare."""
    parts = re.split(r"(\d+)", str(path))
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def sorted_images(paths: list[Path]) -> list[Path]:
    return sorted((p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)


def _split_query(text: str) -> tuple[str, dict[str, str]]:
    base, _, query = text.partition("?")
    return base, dict(parse_qsl(query, keep_blank_values=True))


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:59]) + f"… ({len(text)} characters)"


def _glob(text: str, pattern: Path) -> list[Path]:
    """Matches of a glob, bounded: two ``**`` parts would walk the tree once per pair of folders (a
    hostile string of many would never finish), and a pattern matching millions of files is a mistake."""
    recursive = sum(part == "**" for part in pattern.parts)
    if recursive > 1:
        raise SourceError(f"source {_short(text)} has {recursive} '**' parts; a glob may have at most one")
    if len(pattern.parts) > MAX_GLOB_PARTS:  # glob recurses once per part
        raise SourceError(f"source {_short(text)} has {len(pattern.parts)} path parts; a glob may have at most "
                          f"{MAX_GLOB_PARTS}")
    matches = []
    try:
        for match in glob.iglob(str(pattern), recursive=True):
            matches.append(Path(match))
            if len(matches) > MAX_GLOB_MATCHES:
                raise SourceError(f"source {_short(text)} matches more than {MAX_GLOB_MATCHES} files")
    except (OSError, RecursionError) as exc:
        raise SourceError(f"source {_short(text)}: the glob cannot be expanded ({type(exc).__name__})") from exc
    return matches


def parse_source(spec: int | str | Path) -> SourceSpec:
    """Interpret a source string (see the module docstring) without opening anything."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str, os.PathLike)):
        raise SourceError(f"source must be a camera index, a string or a path, got {describe(spec)}: {SPEC_HELP}")
    if isinstance(spec, int):
        return SourceSpec("camera", check_int(spec, "camera index", minimum=0, maximum=MAX_CAMERA_INDEX,
                                              error=SourceError))
    raw = os.fspath(spec)
    if not isinstance(raw, str):
        raise SourceError(f"source must be a text path, got {describe(raw)}")
    text = raw.strip()
    if not text:
        raise SourceError(f"empty source: {SPEC_HELP}")
    if len(text) > MAX_SPEC_CHARS:
        raise SourceError(f"source {_short(text)} is longer than any path or URL segrt opens "
                          f"({MAX_SPEC_CHARS} characters)")
    if "\x00" in text:
        raise SourceError(f"source {_short(text)} contains a NUL character: {SPEC_HELP}")
    base, options = _split_query(text)
    if re.fullmatch(r"[0-9]+", base):  # ASCII only: str.isdigit() takes '²', which int() refuses
        index = check_int(int(base), "camera index", minimum=0, maximum=MAX_CAMERA_INDEX, error=SourceError)
        return SourceSpec("camera", index, options)
    if re.fullmatch(r"/dev/video\d+", base):
        return SourceSpec("camera", base, options)
    if text.lower().startswith("csi://"):
        sensor = urlsplit(text).netloc or "0"
        if not re.fullmatch(r"[0-9]+", sensor):
            raise SourceError(f"source {text!r}: csi:// needs a sensor number, e.g. csi://0")
        return SourceSpec("csi", int(sensor), options)
    if text.lower().startswith("gst:") or " ! " in text:
        return SourceSpec("gstreamer", text[4:].strip() if text.lower().startswith("gst:") else text)
    scheme = urlsplit(text).scheme.lower()
    if scheme in URL_SCHEMES:
        return SourceSpec("url", text)
    # os.path's tests, not Path's: a too-long name or an unknown ~user is "not there", never an OSError.
    path = Path(os.path.expanduser(text))
    if any(len(part) > 255 for part in path.parts):
        raise SourceError(f"source {_short(text)} has a file name longer than 255 characters: {SPEC_HELP}")
    if os.path.isdir(path):
        try:
            return SourceSpec("images", sorted_images(list(path.iterdir())))
        except OSError as exc:
            raise SourceError(f"source folder {path} cannot be listed: {exc.strerror or exc}") from exc
    if os.path.isfile(path):
        return SourceSpec("images", [path]) if path.suffix.lower() in IMAGE_SUFFIXES else SourceSpec("video", path)
    if glob.has_magic(text):
        return SourceSpec("images", sorted_images(_glob(text, path)))
    raise SourceError(f"source {_short(text)} is not a file, folder, glob match, camera or URL: {SPEC_HELP}")


# ---------------------------------------------------------------------------------------------- cameras
def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0,
                 output_size: tuple[int, int] | None = None) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) ending in BGR frames for OpenCV.

    ``flip`` is nvvidconv's flip-method (0 none, 2 rotate 180, 4/6 mirror, ...); ``output_size``
    (width, height) scales on the Jetson's VIC instead of the CPU. The appsink keeps only the newest
    buffer so a slow reader gets fresh frames instead of a backlog.
    """
    if not 0 <= flip <= 7:
        raise ConfigError(f"flip must be nvvidconv's flip-method 0..7, got {flip}")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and 0 < fps <= MAX_FPS):
        raise ConfigError(f"CSI camera needs width and height in 1..{MAX_SIDE} and fps in 1..{MAX_FPS}, "
                          f"got {width}x{height}@{fps}")
    out_w, out_h = output_size or (width, height)
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1, "
        "format=(string)NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, width=(int){out_w}, height=(int){out_h}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


@lru_cache(maxsize=1)
def opencv_video_io() -> dict[str, bool]:
    """Which capture back-ends this OpenCV build has (``GStreamer``, ``FFMPEG``, ``V4L/V4L2``, ...)."""
    found: dict[str, bool] = {}
    in_section = False
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("Video I/O:"):
            in_section = True
            continue
        if in_section:
            if line.strip() and not line.startswith("    "):
                break
            key, _, value = line.strip().partition(":")
            if key:
                found[key.strip()] = value.strip().upper().startswith("YES")
    return found


def _require_gstreamer(name: str) -> None:
    if not opencv_video_io().get("GStreamer", False):
        raise SourceError(f"{name} needs OpenCV built with GStreamer (JetPack's system OpenCV has it; the pip "
                          "wheels opencv-python(-headless) do not): use the system python3-opencv on the Jetson")


def _int_option(options: dict[str, str], key: str, default: int | None) -> int | None:
    value = options.get(key)
    if value in (None, ""):
        return default
    try:
        return int(float(value))  # type: ignore[arg-type]
    except (ValueError, OverflowError):  # "x", "nan" / "inf"
        raise ConfigError(f"source option {key}={value[:60]!r} is not a finite number") from None


def _camera_properties(options: dict[str, str]) -> dict[int, float]:
    props: dict[int, float] = {cv2.CAP_PROP_BUFFERSIZE: 1}  # a deep driver buffer only adds latency
    fourcc = options.get("fourcc")
    if fourcc:
        if len(fourcc) != 4:
            raise ConfigError(f"fourcc must have 4 characters (e.g. MJPG), got {fourcc!r}")
        props[cv2.CAP_PROP_FOURCC] = cv2.VideoWriter.fourcc(*fourcc)
    for key, prop in (("width", cv2.CAP_PROP_FRAME_WIDTH), ("height", cv2.CAP_PROP_FRAME_HEIGHT),
                      ("fps", cv2.CAP_PROP_FPS)):
        value = _int_option(options, key, None)
        if value is not None:
            limit = MAX_FPS if key == "fps" else MAX_SIDE
            if not 1 <= value <= limit:
                raise ConfigError(f"source option {key}={value} is outside 1..{limit}")
            props[prop] = value
    return props


# ---------------------------------------------------------------------------------------------- entry point
def open_source(spec: int | str | Path | FrameSource, *, live: bool | None = None, fps: float | None = None,
                **options: Any) -> FrameSource:
    """Open a source from a string (see the module docstring); a :class:`FrameSource` is returned as is.

    ``live`` overrides whether the source is treated as real time (default: cameras and URLs are);
    ``fps`` sets the nominal rate of image folders; other keyword options (width, height, fps, flip,
    fourcc) override those in the string's ``?query``.
    """
    if isinstance(spec, FrameSource):
        return spec
    check_bool(live, "live", optional=True)
    check_number(fps, "fps", above=0, maximum=1000, optional=True)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown source option(s) {', '.join(unknown)}; expected {', '.join(OPTIONS)}")
    parsed = parse_source(spec)
    opts = {**parsed.options, **{k: str(v) for k, v in options.items() if v is not None}}
    if fps is not None:
        opts.setdefault("fps", str(fps))
    kind, target = parsed.kind, parsed.target
    if kind == "camera":
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        name = f"camera {target}"
        return VideoCaptureSource(name, target, api, live=True if live is None else live,
                                  properties=_camera_properties(opts),
                                  hint=" (is it connected, and is this user in the 'video' group?)")
    if kind in ("csi", "gstreamer"):
        if kind == "csi":
            name = f"CSI camera {target}"
            pipeline = csi_pipeline(target, width=_int_option(opts, "width", 1280),  # type: ignore[arg-type]
                                    height=_int_option(opts, "height", 720),  # type: ignore[arg-type]
                                    fps=_int_option(opts, "fps", 30), flip=_int_option(opts, "flip", 0))  # type: ignore[arg-type]
        else:
            name, pipeline = "GStreamer pipeline", target
        _require_gstreamer(name)
        return VideoCaptureSource(name, pipeline, cv2.CAP_GSTREAMER, live=True if live is None else live,
                                  hint=f" (pipeline: {pipeline}; is nvargus-daemon running?)")
    if kind == "url":
        return VideoCaptureSource(target, target, cv2.CAP_FFMPEG, live=True if live is None else live,
                                  properties={cv2.CAP_PROP_BUFFERSIZE: 1},
                                  hint=" (check the address and that the stream is up)")
    if kind == "video":
        return VideoCaptureSource(str(target), str(target), cv2.CAP_FFMPEG, live=bool(live),
                                  hint=" (not a video OpenCV's FFmpeg can decode)")
    rate = float(opts["fps"]) if "fps" in opts else None
    source = ImageSequenceSource(str(spec), target, fps=rate)
    source.live = bool(live)
    return source
