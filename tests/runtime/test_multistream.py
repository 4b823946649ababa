"""MultiStream: several real sources (the street video, CamVid frames), one batched inference per tick.

Mechanics (every frame once and in order, batching, errors, shutdown, live policy) use BatchThresholdEngine,
a cheap stand-in with Engine's ``infer_batch``; the test about masks uses the committed SegFormer.
"""

from __future__ import annotations

import shutil
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import BIKES
from test_stream import TIMEOUT, ListSource, consume, stream_threads_alive

from segrt.runtime.engine import Engine
from segrt.runtime.errors import ConfigError, InputError, SourceError
from segrt.runtime.hud import OverlayRenderer
from segrt.runtime.multistream import MultiStream
from segrt.runtime.sources import open_source


def wait_for(condition, limit: float = 5.0) -> bool:
    """Poll ``condition`` for up to ``limit`` s (bounded, so a stopped stream never leaves a thread stuck)."""
    tick = threading.Event()
    for _ in range(int(limit / 0.001)):
        if condition():
            return True
        tick.wait(0.001)
    return False


class BatchThresholdEngine:
    """Engine's ``infer_batch`` contract at almost no cost; ``gate(call, frames)`` runs before each batch."""

    def __init__(self, gate=None):
        self.gate = gate
        self.batches: list[int] = []

    def infer_batch(self, frames):
        self.batches.append(len(frames))
        if self.gate is not None:
            self.gate(len(self.batches), frames)
        return [(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) > 127).astype(np.uint8) for f in frames]


@pytest.fixture(scope="module")
def bikes_frames() -> list[np.ndarray]:
    return list(open_source(BIKES))


def by_camera(results, cameras: int) -> list[list]:
    out: list[list] = [[] for _ in range(cameras)]
    for r in results:
        out[r.camera.index].append(r)
    return out


# ------------------------------------------------------------------------------------------ files
def test_every_frame_of_every_camera_once_in_order_and_batched(bikes_frames):
    holder: list[MultiStream] = []

    def first_tick_waits_for_all_cameras(call, frames):
        if call == 1:  # the first tick runs as soon as one frame is there: meanwhile every camera queues one
            wait_for(lambda: all(c.frames.qsize() for c in holder[0]._captures()))

    engine = BatchThresholdEngine(gate=first_tick_waits_for_all_cameras)
    short = ListSource(bikes_frames[100:107])  # ends early: only its camera finishes
    stream = MultiStream(engine, [str(BIKES), str(BIKES), short], max_frames=30)
    holder.append(stream)
    assert stream.policies == ["all", "all", "all"]
    results, error = consume(stream)
    assert error is None
    cams = by_camera(results, 3)
    assert [len(c) for c in cams] == [30, 30, 7]
    for cam, expected in zip(cams, (bikes_frames[:30], bikes_frames[:30], bikes_frames[100:107])):
        assert [r.index for r in cam] == list(range(len(expected)))  # every frame once, in order
        assert all(np.array_equal(r.frame, f) for r, f in zip(cam, expected))
        assert all(np.array_equal(r.mask, (cv2.cvtColor(r.frame, cv2.COLOR_BGR2GRAY) > 127)) for r in cam)
    assert [c.name for c in stream.cameras] == [stream.sources[0].name, stream.sources[0].name, "list"]
    assert {r.camera.index for r in results if r.tick == 1} == {0, 1, 2}  # one inference over all three
    assert sum(engine.batches) == 67 and len(engine.batches) < 67  # batched: fewer calls than frames
    assert all(r.batch == engine.batches[r.tick] for r in results)
    ticks = [r.tick for r in results]
    assert ticks == sorted(ticks)  # results leave in tick order
    stats = stream.stats
    assert (stats.captured, stats.delivered, stats.dropped) == (67, 67, 0)
    assert [s.delivered for s in stats.cameras] == [30, 30, 7] and all(s.dropped == 0 for s in stats.cameras)
    assert all(0 < s.latency_ms(50) <= s.latency_ms(99) for s in stats.cameras)
    assert stats.fps > 0 and "camera 2 (list): 7 frames" in stats.summary()
    assert [c["frames"] for c in stats.as_dict()["cameras"]] == [30, 30, 7]
    assert all(s._cap is None for s in stream.sources[:2])  # the stream opened the files, so it closed them
    assert not short.closed  # a source object handed in stays the caller's
    assert not stream_threads_alive()


def test_masks_equal_engine_infer_on_frames_of_different_sizes(tiny_onnx, camvid_root, tmp_path):
    engine = Engine(tiny_onnx)
    for p in sorted((camvid_root / "val").glob("*.png"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    renderer = OverlayRenderer.for_engine(engine)
    with engine.stream([str(BIKES), str(tmp_path)], max_frames=4, render=renderer) as stream:
        assert isinstance(stream, MultiStream)
        results, error = consume(stream)
    assert error is None
    cams = by_camera(results, 2)
    assert [[r.index for r in c] for c in cams] == [[0, 1, 2, 3], [0, 1, 2]]
    assert cams[0][0].frame.shape != cams[1][0].frame.shape  # 640x272 video and 480x360 CamVid in one stream
    for r in results:
        assert np.array_equal(r.mask, engine.infer(r.frame))
        assert r.image.shape == r.frame.shape and not np.array_equal(r.image, r.frame)
        assert r.timing.infer_ms > 0 and r.timing.latency_ms >= r.timing.infer_ms


# ------------------------------------------------------------------------------------------ failures
def test_a_camera_raising_mid_stream_reaches_the_caller(bikes_frames):
    failing = ListSource(bikes_frames, fail_at=5)
    stream = MultiStream(BatchThresholdEngine(), [ListSource(bikes_frames), failing])
    results, error = consume(stream)
    assert isinstance(error, SourceError) and "frame 5" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert [r.index for r in by_camera(results, 2)[1]] == [0, 1, 2, 3, 4]  # its frames before the fault arrived
    assert not stream_threads_alive()


def test_a_bad_frame_names_its_camera(tiny_onnx, bikes_frames):
    frames = bikes_frames[:2] + [bikes_frames[2].astype(np.float32)]
    results, error = consume(Engine(tiny_onnx).stream([ListSource(bikes_frames[:5]), ListSource(frames)]))
    assert isinstance(error, InputError) and "float32" in str(error) and "list frame 2" in str(error)
    assert not stream_threads_alive()


class StallingCamera(ListSource):
    """A live camera whose driver gets stuck inside read() before frame ``stall_at``, until ``release`` is set."""

    def __init__(self, frames, stall_at):
        super().__init__(frames, live=True)
        self.stall_at, self.release = stall_at, threading.Event()

    def read(self):
        if self.reads == self.stall_at:
            self.release.wait(TIMEOUT)
        return super().read()


def test_close_mid_run_returns_promptly_even_with_a_hung_camera(bikes_frames):
    hung = StallingCamera(bikes_frames, stall_at=3)
    release = hung.release
    stream = MultiStream(BatchThresholdEngine(), [str(BIKES), hung], read_timeout=None, stop_timeout=0.3)
    try:
        seen = 0
        for r in stream:
            seen += 1
            if r.camera.index == 0 and r.index == 20:
                start = time.monotonic()
                stream.close()
                took = time.monotonic() - start
                break
        assert took < 2.0 and seen >= 21
        assert not any(t.is_alive() for t in stream._threads if t.name != "segrt-stream-capture-1")
        assert stream.sources[0]._cap is None  # the stream opened the file, so it closed it
    finally:
        release.set()
    assert wait_for(lambda: not stream_threads_alive())


def test_a_blocked_camera_is_reported_not_waited_on(bikes_frames):
    hung = StallingCamera(bikes_frames, stall_at=2)
    try:
        stream = MultiStream(BatchThresholdEngine(), [hung, ListSource(bikes_frames)], read_timeout=0.5,
                             stop_timeout=0.1)
        results, error = consume(stream)
    finally:
        hung.release.set()
    assert isinstance(error, SourceError) and "blocked" in str(error)
    assert 1 <= len(by_camera(results, 2)[0]) <= 2


# ------------------------------------------------------------------------------------------ live cameras
class LockstepCamera(ListSource):
    """A live camera that delivers 3 frames per inference (without timing: each side waits for the other)."""

    def __init__(self, frames, limit):
        super().__init__(frames, live=True)
        self.name, self.limit = "lockstep camera", limit
        self.engine = BatchThresholdEngine(gate=self.wait_for_camera)

    def wait_for_camera(self, call, frames):
        wait_for(lambda: self.reads >= min(self.limit, 3 * call + 3), limit=2.0)

    def read(self):
        wait_for(lambda: self.reads < 3 * len(self.engine.batches) + 4, limit=2.0)
        return super().read()


def test_live_camera_keeps_the_latest_frame_while_a_file_loses_none(bikes_frames):
    camera = LockstepCamera(bikes_frames, limit=60)
    stream = MultiStream(camera.engine, [camera, ListSource(bikes_frames[:15])],
                         max_frames=60)
    assert stream.policies == ["latest", "all"]
    results, error = consume(stream)
    assert error is None
    live, file = by_camera(results, 2)
    indices = [r.index for r in live]
    assert indices == sorted(set(indices)) and indices[-1] == 59  # newest first; the last frame is never dropped
    assert [r.index for r in file] == list(range(15))
    cam_stats, file_stats = stream.stats.cameras
    assert cam_stats.dropped >= 15 and cam_stats.captured == 60 == cam_stats.delivered + cam_stats.dropped
    assert file_stats.dropped == 0 and file_stats.delivered == 15
    assert stream.stats.dropped == cam_stats.dropped
    assert not stream_threads_alive()


def test_a_slow_live_camera_does_not_hold_back_the_others(bikes_frames):
    slow = StallingCamera(bikes_frames[:3], stall_at=1)  # stalls after its first frame
    stream = MultiStream(BatchThresholdEngine(), [slow, ListSource(bikes_frames[:20])])
    seen: list = []
    for r in stream:
        seen.append((r.camera.index, r.index))
        if [i for c, i in seen if c == 1] == list(range(20)):
            slow.release.set()  # every file frame arrived while the camera stalled
    assert [i for c, i in seen if c == 1] == list(range(20))
    live = [i for c, i in seen if c == 0]
    assert live[0] == 0 and live[-1] == 2  # latest policy: frame 1 may have been replaced by frame 2
    assert stream.stats.cameras[0].delivered + stream.stats.cameras[0].dropped == 3
    assert not stream_threads_alive()


def test_options_are_checked_before_any_source_opens():
    engine = BatchThresholdEngine()
    with pytest.raises(ConfigError, match="non-empty"):
        MultiStream(engine, [])
    with pytest.raises(ConfigError, match="policy"):
        MultiStream(engine, [str(BIKES)], policy="newest")
    with pytest.raises(ConfigError, match="Engine"):
        MultiStream(object(), [str(BIKES)])
    with pytest.raises(SourceError):
        MultiStream(engine, [str(BIKES), "no_such_video.mp4"])
    stream = MultiStream(engine, [str(BIKES)], max_frames=2)
    assert len(list(stream)) == 2
    with pytest.raises(Exception, match="runs once"):
        list(stream)


# ------------------------------------------------------------------------------------------ tiling
def test_tiles_keep_each_view_in_its_cell_at_a_fixed_size(bikes_frames, camvid_frame):
    from segrt.runtime.hud import Tiler

    tiles = Tiler(cameras=3)  # 2 columns, 2 rows of 640x360 tiles, whichever camera delivers first
    with pytest.raises(ConfigError, match="before any view"):
        tiles.image()
    tiles.update(2, camvid_frame)  # 480x360: letterboxed left and right into 640x360
    tiles.update(0, bikes_frames[0])  # 640x272: letterboxed above and below
    grid = tiles.image()
    assert grid.shape == (720, 1280, 3)
    assert np.array_equal(grid[44:316, :640], bikes_frames[0]) and not grid[:44, :640].any()
    assert not grid[:360, 640:].any()  # camera 1 has no view yet
    cell = grid[360:, :640]
    assert np.array_equal(cell[:, 80:560], camvid_frame) and not cell[:, :80].any() and not cell[:, 560:].any()
    tiles.update(0, bikes_frames[1])
    assert np.array_equal(tiles.image()[44:316, :640], bikes_frames[1]) and tiles.image().shape == grid.shape
    with pytest.raises(ConfigError):
        tiles.update(3, bikes_frames[0])
    wide = Tiler(cameras=4, max_width=640)  # 2x2 of 320x180: the grid fits the width asked for
    wide.update(1, bikes_frames[0])
    assert wide.image().shape == (360, 640, 3)
