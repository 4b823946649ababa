"""Image dimensions from the file header, read before decoding.

A few hundred bytes of a PNG (IHDR), JPEG (SOF marker), BMP or WebP header give the width and height, so
an image over the frame bounds (:data:`segrt.runtime.frames.MAX_SIDE`, ``MAX_PIXELS``) is refused before
OpenCV allocates the pixels: a 400 KB PNG can declare 20000x20000 pixels (1.2 GB decoded). Other formats
(TIFF, ...) return None and are left to OpenCV, whose decoded frame is checked afterwards.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from segrt.runtime.errors import InputError
from segrt.runtime.frames import MAX_PIXELS, MAX_SIDE

# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (reserved) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_MAX_SEGMENTS = 4096  # APPn/COM segments before the SOF; a real file has a handful


def _png(head: bytes) -> tuple[int, int] | None:
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _bmp(head: bytes) -> tuple[int, int] | None:
    if len(head) < 26:
        return None
    (header_size,) = struct.unpack("<I", head[14:18])
    if header_size == 12:  # BITMAPCOREHEADER: 16-bit unsigned sides
        width, height = struct.unpack("<HH", head[18:22])
    else:  # BITMAPINFOHEADER and later: signed 32-bit, a negative height means top-down rows
        width, height = struct.unpack("<ii", head[18:26])
    return abs(width), abs(height)


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:  # extended format: 24-bit canvas size minus one
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:  # lossless: two 14-bit sides minus one
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg(file: BinaryIO) -> tuple[int, int] | None:
    """Walks the marker segments (seeking over their bodies) to the first start-of-frame."""
    file.seek(2)
    for _ in range(_JPEG_MAX_SEGMENTS):
        marker = file.read(2)
        while len(marker) == 2 and marker[0] == 0xFF and marker[1] == 0xFF:  # fill bytes before a marker
            marker = marker[1:] + file.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        code = marker[1]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length field
            continue
        if code in (0xD9, 0xDA):  # end of image or start of scan before any SOF
            return None
        length_bytes = file.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if code in _JPEG_SOF:
            body = file.read(5)
            if len(body) < 5:
                return None
            height, width = struct.unpack(">HH", body[1:5])
            return width, height
        if length < 2:
            return None
        file.seek(length - 2, os.SEEK_CUR)
    return None


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP or WebP file; None for other or unreadable headers.

    Raises :class:`InputError` for a path that is not a regular file: opening a FIFO would block forever.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: OpenCV's own failure names it
    if not stat.S_ISREG(mode):
        raise InputError(f"image {path} is not a regular file")
    try:
        with open(path, "rb") as file:
            head = file.read(32)
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png(head)
            if head.startswith(b"\xff\xd8"):
                return _jpeg(file)
            if head.startswith(b"BM"):
                return _bmp(head)
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return _webp(head)
    except OSError:
        return None
    return None


def check_image_file(path: str | Path, name: str | None = None) -> None:
    """Raise :class:`InputError` naming the file when its header declares an image over the frame bounds."""
    size = image_size(path)
    if size is None:
        return
    width, height = size
    label = name or f"image {path}"
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InputError(f"{label} of {width}x{height} exceeds the {MAX_SIDE}-pixel side limit")
    if width * height > MAX_PIXELS:
        raise InputError(f"{label} of {width}x{height} has {width * height} pixels, "
                         f"more than the limit of {MAX_PIXELS}")
