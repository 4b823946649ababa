"""The wire protocol's pieces that need no server: URLs, error round trips, encoded-image header checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segrt.runtime.errors import ConfigError, InputError, ModelLoadError, RemoteError
from segrt.runtime.remote import _parse
from segrt.runtime.remote_protocol import check_encoded, encoded_size, error_from_text, error_text


@pytest.mark.parametrize("url, want", [("grpc://host", ("grpc", "host:8001")),
                                       ("http://gpu-server:9000", ("http", "gpu-server:9000")),
                                       ("grpc://[::1]:8101", ("grpc", "[::1]:8101"))])
def test_urls(url, want):
    assert _parse(url) == want


@pytest.mark.parametrize("url", ["host:8001", "ftp://host", "grpc://:8001", "http://host:99999", 8001])
def test_bad_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        _parse(url)


def test_a_segrt_error_survives_the_trip_through_a_triton_traceback():
    text = ("Traceback (most recent call last):\n  File \"serving/server.py\", line 125\n"
            f"RuntimeError: {error_text(InputError('frames[0] of 640x480 but the model takes 1280x720'))}\n")
    err = error_from_text(f"[StatusCode.INTERNAL] {text}")
    assert type(err) is InputError and str(err) == "server: frames[0] of 640x480 but the model takes 1280x720"
    assert type(error_from_text(error_text(ModelLoadError("gone")))) is ModelLoadError
    other = error_from_text("[StatusCode.INTERNAL] something else broke")
    assert type(other) is RemoteError and "something else broke" in str(other)
    assert type(error_from_text("segrt NotAnError: x")) is RemoteError  # only segrt's own types are raised


def test_encoded_headers_are_checked_before_decoding(camvid_frame):
    for ext in (".png", ".jpg", ".bmp", ".webp"):
        ok, data = cv2.imencode(ext, camvid_frame)
        assert encoded_size(data.tobytes()) == (camvid_frame.shape[1], camvid_frame.shape[0]), ext
        check_encoded(data.tobytes(), "image")
    ok, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    big = bytearray(png.tobytes())
    big[16:24] = (9000).to_bytes(4, "big") + (10).to_bytes(4, "big")
    with pytest.raises(InputError, match="9000x10 exceeds"):
        check_encoded(bytes(big), "image")
    with pytest.raises(InputError, match="not a JPEG"):
        check_encoded(b"GIF89a....", "image")
