"""Frame sources on the real street video, real CamVid sequences and a real MJPEG network camera."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import BIKES
from mjpeg_camera import MjpegCamera

from segrt.runtime.errors import ConfigError, SegrtError, SourceDisconnectedError, SourceError
from segrt.runtime.sources import (
    FrameSource,
    ImageSequenceSource,
    csi_pipeline,
    natural_key,
    open_source,
    opencv_video_io,
    parse_source,
)


def decode_all(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


@pytest.fixture(scope="module")
def bikes_frames() -> list[np.ndarray]:
    return decode_all(BIKES)


def test_video_file_plays_every_frame_then_ends(bikes_frames):
    with open_source(str(BIKES)) as source:
        assert not source.live
        assert source.fps == pytest.approx(25.0)
        assert source.frame_count == len(bikes_frames) == 250
        frames = list(source)
        assert source.read() is None  # stays ended
    assert len(frames) == 250
    assert all(f.shape == (272, 640, 3) and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[0], bikes_frames[0]) and np.array_equal(frames[-1], bikes_frames[-1])


def test_reopening_a_file_starts_over(bikes_frames):
    source = open_source(BIKES)
    for _ in range(5):
        source.read()
    source.open()
    assert np.array_equal(source.read(), bikes_frames[0])
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_camvid_folder_plays_as_a_sorted_sequence(camvid_root):
    folder = camvid_root / "val"
    names = sorted(p.name for p in folder.glob("*.png"))
    source = open_source(f"{folder}/")
    assert isinstance(source, ImageSequenceSource)
    assert source.frame_count == len(names) == 101
    assert [p.name for p in source.paths] == names
    assert np.array_equal(source.read(), cv2.imread(str(folder / names[0])))


def test_glob_selects_and_sorts_a_sequence(camvid_root):
    pattern = str(camvid_root / "val" / "0016E5_0796*.png")
    expected = sorted(camvid_root.glob("val/0016E5_0796*.png"))
    source = open_source(pattern)
    frames = list(source)
    assert len(frames) == len(expected) > 1
    for frame, path in zip(frames, expected):
        assert np.array_equal(frame, cv2.imread(str(path)))


def test_numbered_frames_sort_naturally(tmp_path, camvid_root):
    # frame10 must come after frame9, which plain string sorting gets wrong.
    src = sorted((camvid_root / "val").glob("*.png"))[:11]
    for i, path in enumerate(src):
        shutil.copy(path, tmp_path / f"frame{i}.png")
    frames = list(open_source(tmp_path))
    assert len(frames) == 11
    for frame, path in zip(frames, src):
        assert np.array_equal(frame, cv2.imread(str(path)))
    assert sorted(["f10.png", "f9.png", "g1.png"], key=lambda s: natural_key(s)) == ["f9.png", "f10.png", "g1.png"]


def test_single_image_is_a_one_frame_source(camvid_frame, camvid_root):
    path = min((camvid_root / "val").glob("*.png"))
    frames = list(open_source(path))
    assert len(frames) == 1 and np.array_equal(frames[0], camvid_frame)


def test_unreadable_image_in_a_folder_raises(tmp_path, camvid_root):
    shutil.copy(min((camvid_root / "val").glob("*.png")), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    source = open_source(tmp_path)
    assert source.read() is not None
    with pytest.raises(SourceError, match="b.png"):
        source.read()


@pytest.mark.parametrize("spec, kind, target, options", [
    ("0", "camera", 0, {}),
    (2, "camera", 2, {}),
    ("/dev/video1?width=1280&height=720&fps=30", "camera", "/dev/video1",
     {"width": "1280", "height": "720", "fps": "30"}),
    ("csi://1?width=1920&flip=2", "csi", 1, {"width": "1920", "flip": "2"}),
    ("csi://", "csi", 0, {}),
    ("rtsp://10.0.0.5:554/live?channel=1", "url", "rtsp://10.0.0.5:554/live?channel=1", {}),
    ("https://cam.local/stream.mjpg", "url", "https://cam.local/stream.mjpg", {}),
    ("gst:videotestsrc ! appsink", "gstreamer", "videotestsrc ! appsink", {}),
    ("v4l2src device=/dev/video0 ! videoconvert ! appsink", "gstreamer",
     "v4l2src device=/dev/video0 ! videoconvert ! appsink", {}),
])  # fmt: skip
def test_source_strings_are_understood(spec, kind, target, options):
    parsed = parse_source(spec)
    assert (parsed.kind, parsed.target, parsed.options) == (kind, target, options)


def test_files_and_folders_are_recognised(camvid_root):
    assert parse_source(str(BIKES)).kind == "video"
    assert parse_source(camvid_root / "val").kind == "images"
    assert parse_source(str(camvid_root / "val" / "*.png")).kind == "images"


@pytest.mark.parametrize("spec", ["missing.mp4", "no/such/folder/", "", "csi://front"])
def test_bad_source_strings_raise_source_error(spec):
    with pytest.raises(SourceError):
        open_source(spec)


def test_glob_matching_nothing_and_empty_folder_raise(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path / "*.png"))
    with pytest.raises(SourceError, match="no images"):
        open_source(tmp_path)


def test_missing_camera_raises_source_error_naming_it():
    with pytest.raises(SourceError, match="/dev/video63"):
        open_source("/dev/video63")


def test_csi_pipeline_carries_size_rate_and_flip():
    pipeline = csi_pipeline(1, width=1920, height=1080, fps=60, flip=2, output_size=(960, 540))
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1920, height=(int)1080, framerate=(fraction)60/1" in pipeline
    assert "nvvidconv flip-method=2" in pipeline
    assert "width=(int)960, height=(int)540, format=(string)BGRx" in pipeline
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")
    with pytest.raises(ConfigError):
        csi_pipeline(flip=8)


@pytest.mark.skipif(opencv_video_io().get("GStreamer", False), reason="this OpenCV has GStreamer")
def test_csi_without_gstreamer_says_what_is_missing():
    with pytest.raises(SourceError, match="GStreamer"):
        open_source("csi://0?width=1280&height=720&fps=30&flip=2")


def test_network_camera_streams_and_reports_disconnects(bikes_frames):
    with MjpegCamera(bikes_frames[:40], script=[25, "down", 15]) as camera:
        source = open_source(camera.url)
        assert source.live and source.frame_count is None
        first = [source.read() for _ in range(25)]
        with pytest.raises(SourceDisconnectedError):
            source.read()
        with pytest.raises(SourceError):  # the camera answers 503
            source.open()
        source.open()
        second = [source.read() for _ in range(15)]
        source.close()
    assert [camera.identify(f) for f in first + second] == list(range(40))


def test_live_file_override_treats_the_end_as_a_disconnect():
    source = open_source(BIKES, live=True)
    assert source.live
    for _ in range(250):
        assert source.read() is not None
    with pytest.raises(SourceDisconnectedError):
        source.read()


def test_open_source_passes_source_objects_through():
    class Custom(FrameSource):
        def read(self):
            return None

        def close(self):
            pass

    custom = Custom()
    assert open_source(custom) is custom


def test_folder_source_skips_a_fifo_named_like_an_image(camvid_root, tmp_path):
    import os
    import threading

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    first = sorted((camvid_root / "val").glob("*.png"))[0]
    shutil.copy(first, tmp_path / "a.png")
    os.mkfifo(tmp_path / "zz.png")  # sorts last: reading it would block forever
    frames: list[np.ndarray] = []

    def play() -> None:
        with open_source(str(tmp_path)) as source:
            frames.extend(source)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    thread.join(timeout=1.0)
    assert not thread.is_alive(), "the folder source blocked on the FIFO"
    assert len(frames) == 1 and np.array_equal(frames[0], cv2.imread(str(first)))


@pytest.mark.parametrize("spec", ["²", "csi://²", "¹²", "csi://٣"])
def test_unicode_digits_are_not_camera_numbers(spec):
    """str.isdigit() accepts superscripts that int() refuses: such a source is a typed error, not ValueError."""
    with pytest.raises(SegrtError):
        open_source(spec)
