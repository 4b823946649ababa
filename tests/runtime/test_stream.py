"""The pipelined Stream on the real street video, CamVid sequences and a real MJPEG network camera.

Tests about the pipeline's mechanics (order, bounds, reconnects, failures) use ThresholdEngine, a
cheap stand-in with Engine's ``infer``; the tests about masks use a real exported SegFormer.
"""

from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest
from conftest import BIKES
from mjpeg_camera import MjpegCamera

from segrt.runtime.engine import Engine
from segrt.runtime.errors import ConfigError, InputError, SegrtError, SourceError
from segrt.runtime.hud import OverlayRenderer
from segrt.runtime.sources import FrameSource, VideoCaptureSource, open_source
from segrt.runtime.stream import Reconnect, Stream

TIMEOUT = 60.0  # generous: a hang fails the test instead of freezing the suite


class ThresholdEngine:
    """Engine's ``infer`` contract (BGR frame -> HxW uint8 mask) at almost no cost; optionally waits for
    ``gate`` before each frame so a test can make inference slower than capture without timing."""

    def __init__(self, gate=None):
        self.gate = gate
        self.calls = 0

    def infer(self, frame: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.gate is not None:
            self.gate(self.calls)
        return (cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) > 127).astype(np.uint8)


class ListSource(FrameSource):
    """Frames from a list; ``fail_at`` raises a foreign exception there, ``live`` makes it a camera."""

    def __init__(self, frames, fail_at=None, live=False, error=None):
        self.name, self.frames, self.fail_at, self.live = "list", frames, fail_at, live
        self.error = error or RuntimeError("sensor fault")
        self.reads = 0
        self.closed = False

    def open(self):
        pass

    def read(self):
        if self.fail_at is not None and self.reads == self.fail_at:
            raise self.error
        if self.reads >= len(self.frames):
            return None
        self.reads += 1
        return self.frames[self.reads - 1]

    def close(self):
        self.closed = True


def consume(stream, limit=None):
    """Iterate ``stream`` in a helper thread; returns (results, error). Fails if it does not finish in time."""
    results, error = [], []

    def run():
        try:
            for r in stream:
                results.append(r)
                if limit is not None and len(results) >= limit:
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which checks its type
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "the stream hung instead of finishing or raising"
    return results, (error[0] if error else None)


def stream_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("segrt-stream") and t.is_alive()]


@pytest.fixture(scope="module")
def bikes_frames() -> list[np.ndarray]:
    return list(open_source(BIKES))


@pytest.fixture(scope="module")
def engine(tiny_onnx) -> Engine:
    return Engine(tiny_onnx)


# ------------------------------------------------------------------------------------------ files
def test_file_stream_delivers_every_frame_in_order(bikes_frames):
    stream = Stream(ThresholdEngine(), str(BIKES))
    assert stream.policy == "all"
    results, error = consume(stream)
    assert error is None
    assert [r.index for r in results] == list(range(250))
    assert all(np.array_equal(r.frame, f) for r, f in zip(results, bikes_frames))
    stats = stream.stats
    assert (stats.captured, stats.delivered, stats.dropped) == (250, 250, 0)
    assert 0 < stats.latency_ms(50) <= stats.latency_ms(95)
    assert stats.fps > 0
    assert stream.source._cap is None  # the stream opened the file, so it closed it
    assert not stream_threads_alive()


def test_masks_and_overlays_match_engine_infer(engine, bikes_frames):
    with engine.stream(BIKES, render=OverlayRenderer.for_engine(engine), max_frames=6) as stream:
        results, error = consume(stream)
    assert error is None and len(results) == 6
    for r in results:
        assert np.array_equal(r.mask, engine.infer(bikes_frames[r.index]))
        assert r.image.shape == r.frame.shape and r.image.dtype == np.uint8
        assert not np.array_equal(r.image, r.frame)  # something was drawn
        assert r.timing.infer_ms > 0 and r.timing.latency_ms >= r.timing.infer_ms


def test_camvid_sequence_streams_in_file_order(engine, camvid_root, tmp_path):
    paths = sorted((camvid_root / "val").glob("*.png"))[:5]
    for p in reversed(paths):  # creation order opposite to frame order
        shutil.copy(p, tmp_path / p.name)
    results, error = consume(engine.stream(str(tmp_path / "*.png")))
    assert error is None and len(results) == 5
    for r, p in zip(results, paths):
        frame = cv2.imread(str(p))
        assert np.array_equal(r.frame, frame)
        assert np.array_equal(r.mask, engine.infer(frame))


def test_slow_consumer_on_a_file_drops_nothing_and_queues_stay_bounded(bikes_frames):
    source = ListSource(bikes_frames[:40])
    stream = Stream(ThresholdEngine(), source, queue_size=2, render=lambda r, s: r.frame)
    in_flight_max = 3 * 2 + 2  # three hand-overs of 2, plus the frames inside inference and render
    seen, wait = [], threading.Event()
    for r in stream:
        seen.append(r.index)
        wait.wait(0.01)  # a consumer slower than the pipeline
        assert source.reads <= r.index + 1 + in_flight_max  # capture is held back, frames do not pile up
    assert seen == list(range(40)) and stream.stats.dropped == 0
    assert max(stream.stats.max_queued.values()) <= 2
    assert not source.closed  # a source object handed in stays the caller's


# ------------------------------------------------------------------------------------------ live sources
class LockstepCamera(ListSource):
    """A live camera that runs 3 frames ahead of inference per inferred frame: deterministic drops."""

    def __init__(self, frames):
        super().__init__(frames, live=True)
        self.engine = ThresholdEngine(gate=self.wait_for_camera)

    @staticmethod
    def _wait(condition, limit=2.0):  # bounded, so a stopped stream never leaves a thread stuck here
        tick = threading.Event()
        for _ in range(int(limit / 0.001)):
            if condition():
                return
            tick.wait(0.001)

    def wait_for_camera(self, call):
        self._wait(lambda: self.reads >= min(len(self.frames), 3 * call + 3))

    def read(self):
        self._wait(lambda: self.reads < 3 * self.engine.calls + 4)
        return super().read()


def test_live_camera_keeps_only_the_latest_frame_and_counts_drops(bikes_frames):
    source = LockstepCamera(bikes_frames)
    stream = Stream(source.engine, source)
    assert stream.policy == "latest"
    results, error = consume(stream, limit=30)
    assert error is None and len(results) == 30
    indices = [r.index for r in results]
    assert indices == sorted(set(indices))  # newest-first never reorders or repeats
    stats = stream.stats
    assert stats.dropped >= 30  # the camera ran ahead by 3 frames per inference
    assert stats.captured - stats.dropped - stats.delivered <= 4  # in flight when stopped: one per stage
    assert stats.max_queued["frames"] == 1 and stats.max_queued["results"] == 1
    assert not stream_threads_alive()


def test_network_camera_disconnect_and_return(bikes_frames):
    with MjpegCamera(bikes_frames[:60], script=[30, "down", "down", 60]) as camera:
        stream = Stream(ThresholdEngine(), camera.url, policy="all", max_frames=45,
                        reconnect=Reconnect(first_delay=0.05, max_delay=0.2, give_up_after=20))
        results, error = consume(stream)
    assert error is None
    assert stream.stats.reconnects == 1 and camera.connections == 4
    assert [camera.identify(r.frame) for r in results] == list(range(45))


def test_camera_that_never_returns_raises_in_the_caller(bikes_frames):
    with MjpegCamera(bikes_frames[:10], script=[10], then="down") as camera:
        stream = Stream(ThresholdEngine(), camera.url, reconnect=Reconnect(first_delay=0.05, give_up_after=0.5))
        results, error = consume(stream)
    assert isinstance(error, SourceError) and "gave up" in str(error)
    assert camera.connections >= 3  # it did retry
    assert 1 <= len(results) <= 10  # latest-frame policy: some of the 10 may have been dropped
    assert not stream_threads_alive()


# ------------------------------------------------------------------------------------------ failures
def test_source_raising_mid_stream_surfaces_after_the_frames_before_it(bikes_frames):
    source = ListSource(bikes_frames, fail_at=12)
    results, error = consume(Stream(ThresholdEngine(), source))
    assert [r.index for r in results] == list(range(12))
    assert isinstance(error, SourceError) and "frame 12" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert not stream_threads_alive()


def test_segrt_errors_from_the_source_keep_their_type(bikes_frames):
    source = ListSource(bikes_frames, fail_at=3, error=SourceError("USB camera unplugged"))
    results, error = consume(Stream(ThresholdEngine(), source))
    assert len(results) == 3 and isinstance(error, SourceError) and "unplugged" in str(error)


def test_inference_error_surfaces_in_the_caller(engine, bikes_frames):
    frames = bikes_frames[:2] + [bikes_frames[2].astype(np.float32)] + bikes_frames[3:6]
    results, error = consume(engine.stream(ListSource(frames)))
    assert [r.index for r in results] == [0, 1]
    assert isinstance(error, InputError) and "float32" in str(error)
    assert not stream_threads_alive()


def test_render_error_surfaces_in_the_caller(bikes_frames):
    def render(result, stats):
        if result.index == 4:
            raise ValueError("bad overlay")
        return result.frame

    results, error = consume(Stream(ThresholdEngine(), ListSource(bikes_frames), render=render))
    assert len(results) == 4 and isinstance(error, ValueError)
    assert not stream_threads_alive()


def test_leaving_the_loop_early_stops_threads_and_closes_the_source():
    stream = Stream(ThresholdEngine(), str(BIKES))
    for r in stream:
        if r.index == 5:
            break
    assert isinstance(stream.source, VideoCaptureSource) and stream.source._cap is None
    assert not stream_threads_alive()
    assert stream.stats.delivered == 6


def test_a_stream_runs_once_and_validates_options():
    stream = Stream(ThresholdEngine(), str(BIKES), max_frames=3)
    assert len(list(stream)) == 3
    with pytest.raises(SegrtError, match="runs once"):
        list(stream)
    with pytest.raises(ConfigError):
        Stream(ThresholdEngine(), str(BIKES), policy="newest")
    with pytest.raises(SourceError):
        Stream(ThresholdEngine(), "no_such_video.mp4")


def test_latest_policy_on_a_file_accounts_for_every_frame(bikes_frames):
    # A file under "latest" is played like a camera: each frame is either delivered or counted as dropped.
    stream = Stream(ThresholdEngine(), str(BIKES), policy="latest", max_frames=25)
    results, error = consume(stream)
    assert error is None and results
    indices = [r.index for r in results]
    assert indices == sorted(set(indices)) and indices[-1] == 24  # the last frame is never dropped
    assert stream.stats.captured == 25 == stream.stats.delivered + stream.stats.dropped
    assert all(np.array_equal(r.frame, bikes_frames[r.index]) for r in results)


def test_a_source_blocked_in_read_is_reported_not_waited_on(bikes_frames):
    release = threading.Event()

    class HungCamera(ListSource):
        def read(self):
            if self.reads == 3:
                release.wait(TIMEOUT)  # a driver stuck inside read()
            return super().read()

    try:
        stream = Stream(ThresholdEngine(), HungCamera(bikes_frames, live=True), read_timeout=0.5, stop_timeout=0.1)
        results, error = consume(stream)
    finally:
        release.set()
    assert isinstance(error, SourceError) and "blocked" in str(error)
    assert 1 <= len(results) <= 3
