"""Image sizes read from file headers, so oversized images and FIFOs are refused before anything is decoded."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from segrt.runtime.datasets import camvid
from segrt.runtime.errors import InputError
from segrt.runtime.frames import MAX_SIDE
from segrt.runtime.image_header import check_image_file, image_size
from segrt.runtime.sources import open_source

BOMB_SIDE = 20000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    """A valid ~400 KB grayscale PNG of 20000x20000 zero pixels: 1.2 GB once OpenCV decodes it to BGR."""
    deflate = zlib.compressobj(9)
    row = b"\0" * (BOMB_SIDE + 1)  # filter byte + pixels
    pixels = b"".join(deflate.compress(row) for _ in range(BOMB_SIDE)) + deflate.flush()
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)
    path = tmp_path_factory.mktemp("bomb") / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
                     + _png_chunk(b"IEND", b""))
    assert path.stat().st_size < 1_000_000
    return path


def _refused_cheaply(action, match: str) -> None:
    """``action`` raises InputError matching ``match`` with under 50 MB allocated on the way (numpy arrays,
    OpenCV's decoded images included, are traced)."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match):
            action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"


def test_png_bomb_is_refused_from_its_header(png_bomb):
    assert image_size(png_bomb) == (BOMB_SIDE, BOMB_SIDE)
    _refused_cheaply(lambda: check_image_file(png_bomb), f"big.png of {BOMB_SIDE}x{BOMB_SIDE} exceeds the {MAX_SIDE}")


def test_folder_source_refuses_the_bomb_before_decoding(png_bomb, camvid_frame, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), camvid_frame)
    shutil.copy(png_bomb, tmp_path / "b.png")
    with open_source(str(tmp_path)) as source:
        assert np.array_equal(source.read(), camvid_frame)
        _refused_cheaply(source.read, r"frame 1 of .* \(image .*b\.png\)")


def test_dataset_refuses_the_bomb_before_decoding(png_bomb, camvid_root, tmp_path):
    for split in ("val", "valannot"):
        (tmp_path / split).mkdir()
    name = sorted((camvid_root / "val").glob("*.png"))[0].name
    shutil.copy(png_bomb, tmp_path / "val" / name)
    shutil.copy(camvid_root / "valannot" / name, tmp_path / "valannot" / name)
    dataset = camvid(tmp_path, "val")
    _refused_cheaply(lambda: dataset.read_image(0), name)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".webp", ".png"])
@pytest.mark.parametrize("size", [(1, 1), (17, 5), (640, 272), (960, 720), (4097, 3)])
def test_header_size_matches_what_opencv_writes(camvid_frame, tmp_path, suffix, size):
    width, height = size
    image = cv2.resize(camvid_frame, (width, height), interpolation=cv2.INTER_AREA)
    path = tmp_path / f"frame{suffix}"
    assert cv2.imwrite(str(path), image)
    assert image_size(path) == (width, height)
    assert cv2.imread(str(path)).shape[:2] == (height, width)


@pytest.mark.parametrize("params", [[cv2.IMWRITE_WEBP_QUALITY, 101], [cv2.IMWRITE_WEBP_QUALITY, 50],
                                    [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]])
def test_lossless_webp_and_progressive_jpeg_headers(camvid_frame, tmp_path, params):
    suffix = ".jpg" if params[0] == cv2.IMWRITE_JPEG_PROGRESSIVE else ".webp"
    path = tmp_path / f"frame{suffix}"
    assert cv2.imwrite(str(path), camvid_frame[:301, :477], params)
    assert image_size(path) == (477, 301)


def test_grayscale_and_top_down_bmp(tmp_path):
    gray = np.arange(7 * 9, dtype=np.uint8).reshape(7, 9)
    assert cv2.imwrite(str(tmp_path / "g.bmp"), gray)
    assert image_size(tmp_path / "g.bmp") == (9, 7)
    data = bytearray((tmp_path / "g.bmp").read_bytes())
    data[22:26] = struct.pack("<i", -7)  # a negative height stores the rows top-down
    (tmp_path / "t.bmp").write_bytes(bytes(data))
    assert image_size(tmp_path / "t.bmp") == (9, 7)


def test_unknown_or_damaged_headers_fall_back_to_opencv(camvid_frame, tmp_path):
    assert cv2.imwrite(str(tmp_path / "a.tiff"), camvid_frame)
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\0\x10JFIF")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("a.tiff", "cut.png", "cut.jpg", "text.png", "missing.png"):
        assert image_size(tmp_path / name) is None
        check_image_file(tmp_path / name)  # nothing to refuse: OpenCV decides


def _fifo(path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)


def _within_a_second(action):
    """Runs ``action`` in a daemon thread so a hang fails the test instead of blocking the run."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "blocked on the FIFO"
    assert time.monotonic() - start < 1.0
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


def test_fifo_is_refused_not_opened(tmp_path):
    _fifo(tmp_path / "zz.png")
    with pytest.raises(InputError, match="zz.png is not a regular file"):
        _within_a_second(lambda: check_image_file(tmp_path / "zz.png"))


def test_dataset_folder_skips_a_fifo(camvid_root, tmp_path):
    names = [p.name for p in sorted((camvid_root / "val").glob("*.png"))[:2]]
    for split in ("val", "valannot"):
        (tmp_path / split).mkdir()
        for name in names:
            shutil.copy(camvid_root / split / name, tmp_path / split / name)
    _fifo(tmp_path / "val" / "zz.png")
    _fifo(tmp_path / "valannot" / "zz.png")
    dataset = _within_a_second(lambda: camvid(tmp_path, "val"))
    assert [p.name for p in dataset.images] == names
    image, label = _within_a_second(lambda: dataset[1])
    assert image.shape[:2] == label.shape
