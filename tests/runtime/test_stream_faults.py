"""Faults while streaming that tests/test_stream.py and test_demo.py do not already cover: a video
damaged in the middle, a camera device that vanishes and comes back, and Ctrl-C (KeyboardInterrupt)
arriving in the caller's thread while results are being saved. After each: the stream ends cleanly or
with a typed error, its threads are gone, the device is released, and saved outputs are complete."""

from __future__ import annotations

import signal
import threading

import cv2
import numpy as np
import pytest
from conftest import BIKES, count_frames
from test_stream import ThresholdEngine, consume, stream_threads_alive

from segrt.runtime.sinks import MaskSink, VideoSink
from segrt.runtime.sources import FrameSource, VideoCaptureSource, open_source
from segrt.runtime.stream import Reconnect, Stream


@pytest.fixture(scope="module")
def damaged_video(tmp_path_factory):
    """bikes.mp4 with 20 kB of its frame data overwritten: the H.264 decoder fails part way through."""
    data = bytearray(BIKES.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20_000] = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    path = tmp_path_factory.mktemp("damaged") / "damaged.mp4"
    path.write_bytes(bytes(data))
    return path


def test_decoder_errors_mid_file_do_not_end_the_file_early(damaged_video):
    """OpenCV reports a failed read at the damage as if the file ended; the source reads on past it."""
    cap = cv2.VideoCapture(str(damaged_video), cv2.CAP_FFMPEG)
    first_failure = 0
    while cap.read()[0]:
        first_failure += 1
    cap.release()
    stream = Stream(ThresholdEngine(), str(damaged_video))  # the stream opens the file, so it releases it
    source = stream.source
    results, error = consume(stream)
    assert error is None
    assert [r.index for r in results] == list(range(len(results)))
    assert first_failure < len(results) < 250, "the damage should cost frames, but not the rest of the file"
    assert source.undecodable == 250 - len(results)
    assert source._cap is None and not stream_threads_alive()  # the capture is released


class VanishingDevice(FrameSource):
    """A live camera backed by a real OpenCV capture of a video file: after ``vanish_at`` frames the
    device node disappears (the file is renamed away, so reopening fails like an unplugged camera) and
    comes back after ``absent_for`` failed reopen attempts."""

    def __init__(self, path, vanish_at: int, absent_for: int):
        self.path, self.vanish_at, self.absent_for = path, vanish_at, absent_for
        self.name, self.live = "vanishing camera", True
        self.hidden = path.with_suffix(".gone")
        self.inner: VideoCaptureSource | None = VideoCaptureSource(self.name, str(path), cv2.CAP_FFMPEG, live=True)
        self.reads = self.failed_opens = self.opens = 0

    def open(self):
        if self.hidden.exists():
            if self.failed_opens == self.absent_for - 1:
                self.hidden.rename(self.path)  # plugged back in
            else:
                self.failed_opens += 1
        self.inner = VideoCaptureSource(self.name, str(self.path), cv2.CAP_FFMPEG, live=True)  # SourceError while gone
        self.opens += 1

    def read(self):
        if self.reads == self.vanish_at and self.opens == 0:
            self.close()
            self.path.rename(self.hidden)
        if self.inner is None:
            from segrt.runtime.errors import SourceDisconnectedError

            raise SourceDisconnectedError(f"{self.name} was unplugged")
        self.reads += 1
        return self.inner.read()

    def close(self):
        if self.inner is not None:
            self.inner.close()
            self.inner = None


def test_camera_device_vanishing_and_returning(tmp_path):
    clip = tmp_path / "camera.mp4"
    clip.write_bytes(BIKES.read_bytes())
    device = VanishingDevice(clip, vanish_at=20, absent_for=3)
    stream = Stream(ThresholdEngine(), device, policy="all", max_frames=50,
                    reconnect=Reconnect(first_delay=0.01, max_delay=0.05, give_up_after=30))
    results, error = consume(stream)
    assert error is None
    assert device.failed_opens == 2 and device.opens == 1 and stream.stats.reconnects == 1
    assert len(results) == 50 and [r.index for r in results] == list(range(50))
    # After the device came back it restarts at its first frame, as a reopened camera delivers anew.
    assert np.array_equal(results[20].frame, results[0].frame)
    device.close()
    assert not stream_threads_alive()


class Looped(FrameSource):
    """The decoded street video, over and over: a stream that would run until interrupted."""

    def __init__(self, frames):
        self.frames, self.name, self.n, self.closed = frames, "looped", 0, False

    def open(self):
        pass

    def read(self):
        self.n += 1
        return self.frames[(self.n - 1) % len(self.frames)]

    def close(self):
        self.closed = True


@pytest.fixture(scope="module")
def bikes_frames():
    return list(open_source(BIKES))[:40]


@pytest.fixture
def sigint_raises():
    """A shell's background job (nohup, `make test &`) starts with SIGINT ignored, and then no
    KeyboardInterrupt is ever raised: install Python's default handler for the test."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("where", ["loop", "signal"])
def test_ctrl_c_while_saving_leaves_complete_video_and_masks(tmp_path, bikes_frames, where, sigint_raises):
    """KeyboardInterrupt raised in the caller's loop, or a real SIGINT landing wherever the main thread
    is (inside the stream's hand-over, OpenCV's writer, ...): the with-blocks close everything, the
    video is playable and holds exactly the frames written, and every mask written is on disk. (A
    stream closes sources it opened itself; one handed in as an object is the caller's to close.)"""
    source = Looped(bikes_frames)
    video, masks = tmp_path / "out.mp4", tmp_path / "masks"
    timer = None
    with (pytest.raises(KeyboardInterrupt), source, Stream(ThresholdEngine(), source) as stream,
          VideoSink(video, fps=25) as vsink, MaskSink(masks) as msink):
        for result in stream:
            msink.write(result.index, result.mask * 255)
            vsink.write(result.frame)
            if where == "loop" and result.index == 29:
                raise KeyboardInterrupt
            if where == "signal" and result.index == 10 and timer is None:
                timer = threading.Timer(0.2, signal.raise_signal, (signal.SIGINT,))
                timer.start()
            assert result.index < 100_000
    if timer is not None:
        timer.join()
    assert source.closed and not stream_threads_alive()
    assert vsink.frames >= 11 and count_frames(video) == vsink.frames
    assert len(list(masks.glob("*.png"))) == msink.frames
    assert vsink.frames <= msink.frames <= vsink.frames + 1  # the interrupt may land between the two writes
    if where == "loop":
        assert vsink.frames == msink.frames == 30
    first = cv2.imread(str(masks / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert first.shape == bikes_frames[0].shape[:2]
