"""Hostile arguments through every public entry point of the runtime: each raises the exact typed
SegrtError subclass and the message names the argument, file or frame at fault (README "Guarantees").
No torch: the models are the bundled ONNX and tiny ONNX graphs built with onnx.helper."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from tiny_models import plain_bgr, reference_mask, write_pixel_model

from segrt.runtime.engine import Engine
from segrt.runtime.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    ModelLoadError,
    SegrtError,
    SourceError,
)
from segrt.runtime.frames import MAX_PIXELS, MAX_SIDE
from segrt.runtime.models import models_dir
from segrt.runtime.sources import open_source
from segrt.runtime.stream import Reconnect, Stream

BUNDLED = models_dir() / "camvid-b0.onnx"


@pytest.fixture(scope="module")
def pixel_engine(tmp_path_factory) -> Engine:
    return Engine(write_pixel_model(tmp_path_factory.mktemp("pixel") / "pixel.onnx"), threads=1)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (24, 32, 3), np.uint8)


def raises(error: type[SegrtError], *words: str):
    """pytest.raises for exactly ``error`` (not a subclass, not a parent) whose message holds ``words``."""
    class Exact:
        def __enter__(self):
            self.ctx = pytest.raises(SegrtError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert type(self.info.value) is error, f"{type(self.info.value).__name__}: {self.info.value}"
            for word in words:
                assert word in str(self.info.value), f"{word!r} not in {str(self.info.value)!r}"
            return handled
    return Exact()


# ------------------------------------------------------------------------------------------ Engine(...)
@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": None}, ModelLoadError, ["model", "NoneType"]),
    ({"model": 123}, ModelLoadError, ["model", "int 123"]),
    ({"model": b"camvid-b0"}, ModelLoadError, ["model", "bytes"]),
    ({"model": ""}, ModelLoadError, ["model", "empty"]),
    ({"model": "a\x00b.onnx"}, ModelLoadError, ["NUL"]),
    ({"model": "m/" * 3000}, ModelLoadError, ["longer than any path"]),
    ({"model": "x" * 300 + ".onnx"}, ModelLoadError, ["255"]),
    ({"model": "no-such-model"}, ModelLoadError, ["no bundled model", "no-such-model"]),
    ({"threads": "2"}, ConfigError, ["threads", "str '2'"]),
    ({"threads": True}, ConfigError, ["threads", "bool"]),
    ({"threads": -1}, ConfigError, ["threads", "-1"]),
    ({"threads": 2.0}, ConfigError, ["threads", "float"]),
    ({"device": "0"}, ConfigError, ["device"]),
    ({"device": -3}, ConfigError, ["device", "-3"]),
    ({"backend": 5}, ConfigError, ["backend", "int 5"]),
    ({"backend": "warp-drive"}, BackendUnavailableError, ["backend", "warp-drive"]),
])
def test_engine_arguments(kwargs, error, words):
    kwargs = {"model": str(BUNDLED), **kwargs}
    with raises(error, *words):
        Engine(kwargs.pop("model"), **kwargs)


def test_model_paths_that_are_not_regular_files(tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    os.mkfifo(tmp_path / "fifo.onnx")
    (tmp_path / "loop.onnx").symlink_to(tmp_path / "loop.onnx")
    (tmp_path / "broken.onnx").symlink_to(tmp_path / "gone.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = {"folder.onnx": "is a directory", "fifo.onnx": "FIFO", "loop.onnx": "symlink loop",
             "broken.onnx": "broken symlink", "empty.onnx": "empty", "missing.onnx": "does not exist"}
    for name, words in cases.items():
        with raises(ModelLoadError, name, words):  # the FIFO case would hang if anything opened it
            Engine(tmp_path / name)
    with raises(ModelLoadError, os.devnull, "character device"):
        Engine(os.devnull)


def test_a_folder_named_like_a_bundled_model_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "camvid-b0").mkdir()
    with Engine("camvid-b0", threads=1) as engine:
        assert engine.path == BUNDLED
    with raises(ModelLoadError, "is a directory"):  # a Path means the local folder
        Engine(Path("camvid-b0"))


# ------------------------------------------------------------------------------------------ infer / logits
HOSTILE_FRAMES = [
    (None, "NoneType"), ("frame.png", "str"), ([[1, 2, 3]], "list"), (np.uint8(7), "shape"),
    (np.zeros((8, 8, 3), np.float32), "float32"), (np.full((8, 8, 3), np.nan, np.float64), "float64"),
    (np.zeros((8, 8, 3), np.int64), "int64"), (np.zeros((8, 8, 3), bool), "bool"),
    (np.zeros((8, 8, 3), object), "object"), (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((8, 0), np.uint8), "empty"), (np.zeros((8, 8, 2), np.uint8), "2 channels"),
    (np.zeros((8, 8, 5), np.uint8), "5 channels"), (np.zeros(8, np.uint8), "1 dimensions"),
    (np.zeros((1, 8, 8, 3), np.uint8), "4 dimensions"),
    (np.broadcast_to(np.uint8(0), (MAX_SIDE + 1, 1, 3)), "side limit"),
    (np.broadcast_to(np.uint8(0), (MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1)), "pixels"),
]


@pytest.mark.parametrize("bad, words", HOSTILE_FRAMES, ids=[w for _, w in HOSTILE_FRAMES])
def test_infer_and_logits_refuse_hostile_frames(pixel_engine, bad, words):
    with raises(InputError, "frame", words):
        pixel_engine.infer(bad)
    with raises(InputError, "frame", words):
        pixel_engine.logits(bad)


def test_oversized_frames_are_refused_before_any_allocation(pixel_engine):
    """A broadcast view costs nothing; had the check come after a copy or cvtColor, numpy's (traced) copy
    of this grey 16384x16384 frame would allocate 256 MiB."""
    huge = np.broadcast_to(np.uint8(1), (16384, 16384))
    tracemalloc.start()
    try:
        with raises(InputError, "16384x16384"):
            pixel_engine.infer(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated before refusing the frame"


def test_a_frame_at_the_pixel_bound_runs(tmp_path):
    """The largest documented frame (MAX_PIXELS pixels) gives a full-size mask, through a fixed-size
    model, so the mask's upsampling covers all of it."""
    engine = Engine(write_pixel_model(tmp_path / "fixed.onnx", input_hw=(16, 32)), threads=1)
    h, w = MAX_SIDE, MAX_PIXELS // MAX_SIDE
    frame = np.broadcast_to(np.array([0, 0, 255], np.uint8), (h, w, 3))  # pure red: class 0 everywhere
    mask = engine.infer(frame)
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert int(mask.min()) == int(mask.max()) == 0


# ------------------------------------------------------------------------------------------ infer_batch
@pytest.mark.parametrize("frames, words", [
    (None, ["frames", "NoneType"]), ("abc", ["frames", "str"]), (5, ["frames", "int"]),
    ((f for f in []), ["frames", "generator"]), ({"a": 1}, ["frames", "dict"]),
    (np.zeros((24, 32, 3), np.uint8), ["single array", "infer(frame)"]),
    (np.zeros((24, 32), np.uint8), ["single array", "infer(frame)"]),
    (np.zeros((2, 2, 24, 32, 3), np.uint8), ["single array"]),
])
def test_infer_batch_refuses_what_is_not_a_list_of_frames(pixel_engine, frames, words):
    with raises(InputError, *words):
        pixel_engine.infer_batch(frames)


class SpyBackend:
    """Wraps a backend and records every batch it is asked to run."""

    def __init__(self, backend):
        self.inner, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, batch):
        self.calls.append(batch.shape)
        return self.inner.run(batch)


def test_infer_batch_checks_all_frames_before_running_any(tmp_path, frame):
    """Mixed sizes on a dynamic model make several groups, so an implementation that ran each group as
    it checked it would call the backend before reaching the bad last frame."""
    engine = Engine(write_pixel_model(tmp_path / "pixel.onnx"), threads=1)
    spy = SpyBackend(engine.backend)
    engine.backend = spy
    good = [frame, frame[:10, :12], np.ascontiguousarray(frame[::2])]
    with raises(InputError, "frames[3]", "float32"):
        engine.infer_batch(good + [frame.astype(np.float32)])
    assert spy.calls == []
    masks = engine.infer_batch(good)  # the spy does record real runs
    assert len(spy.calls) == 3 and [m.shape for m in masks] == [(24, 32), (10, 12), (12, 32)]


def test_infer_batch_of_mixed_sizes_matches_the_reference(pixel_engine, frame):
    frames = [frame, frame[:5, :7], np.zeros((3, 40), np.uint8), frame[:, :, ::-1], frame]
    for f, mask in zip(frames, pixel_engine.infer_batch(frames), strict=True):
        expected, ambiguous = reference_mask(plain_bgr(f))
        assert mask.shape == f.shape[:2] and np.all((mask == expected) | ambiguous)


def test_more_than_256_classes_give_uint16_masks_never_wrapped(tmp_path):
    weights = np.zeros((300, 3), np.float32)
    weights[299, 0] = 1.0  # class 299 follows red
    bias = np.zeros(300, np.float32)
    bias[5] = 0.5  # class 5 wins where red < 0.5
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:2, :, 2] = 255  # top half red
    for output in ("logits", "labels"):
        engine = Engine(write_pixel_model(tmp_path / f"c300-{output}.onnx", weights, bias, output=output))
        mask = engine.infer(frame)
        assert mask.dtype == np.uint16 and engine.mask_dtype is np.uint16
        assert (mask[:2] == 299).all() and (mask[2:] == 5).all()


# ------------------------------------------------------------------------------------------ stream / sources
@pytest.mark.parametrize("source, words", [
    (np.zeros((24, 32, 3), np.uint8), ["source", "ndarray"]), (None, ["source", "NoneType"]),
    (3.5, ["source", "float"]), (b"clip.mp4", ["source", "bytes"]), (True, ["source", "bool"]),
    (-1, ["camera index", "-1"]), ("", ["empty source"]), ("a\x00b", ["NUL"]),
    ("x" * 300, ["255 characters"]), ("d/" * 3000, ["longer than any path"]),
    ("**/**/**/*.png", ["3 '**' parts"]), ("*/" * 100 + "*.png", ["101 path parts"]),
    ("no/such/file.mp4", ["no/such/file.mp4", "is not a file"]), ("~no-such-user-here/x.mp4", ["is not a file"]),
])
def test_stream_refuses_hostile_sources(pixel_engine, source, words):
    with raises(SourceError, *words):
        pixel_engine.stream(source)


@pytest.mark.parametrize("options, words", [
    ({"queue_size": "2"}, ["queue_size", "str"]), ({"queue_size": 0}, ["queue_size"]),
    ({"queue_size": 10**9}, ["queue_size"]), ({"policy": None}, ["policy"]), ({"policy": "fastest"}, ["policy"]),
    ({"render": "overlay"}, ["render", "callable"]), ({"reconnect": 5}, ["reconnect", "Reconnect"]),
    ({"max_frames": -1}, ["max_frames"]), ({"max_frames": 1.5}, ["max_frames"]),
    ({"read_timeout": 0}, ["read_timeout"]), ({"read_timeout": float("nan")}, ["read_timeout"]),
    ({"stop_timeout": "5"}, ["stop_timeout"]),
])
def test_stream_options_are_checked_before_the_source_opens(pixel_engine, tmp_path, frame, options, words):
    import cv2

    cv2.imwrite(str(tmp_path / "0.png"), frame)
    with raises(ConfigError, *words):
        Stream(pixel_engine, str(tmp_path), **options)


@pytest.mark.parametrize("kwargs, words", [
    ({"factor": 0.5}, ["factor"]), ({"first_delay": -1}, ["first_delay"]), ({"give_up_after": "60"}, ["give_up_after"]),
])
def test_reconnect_policy_is_checked(kwargs, words):
    with raises(ConfigError, *words):
        Reconnect(**kwargs)


def test_stream_needs_an_engine(tmp_path):
    with raises(ConfigError, "engine", "NoneType"):
        Stream(None, str(tmp_path))  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, words", [
    ({"live": "yes"}, ["live"]), ({"fps": 0}, ["fps"]), ({"fps": "30"}, ["fps"]), ({"bogus": 1}, ["bogus"]),
])
def test_open_source_options(tmp_path, frame, kwargs, words):
    import cv2

    cv2.imwrite(str(tmp_path / "0.png"), frame)
    with raises(ConfigError, *words):
        open_source(str(tmp_path), **kwargs)


@pytest.mark.parametrize("query, words", [("width=inf", ["width", "finite"]), ("width=x", ["width"]),
                                          ("height=0", ["height", "outside"]), ("fps=100000", ["fps", "outside"])])
def test_camera_options_are_checked_before_opening(query, words):
    with raises(ConfigError, *words):
        open_source(f"/dev/video97?{query}")


def test_folder_with_an_oversized_image_names_the_file(tmp_path, pixel_engine):
    import cv2

    cv2.imwrite(str(tmp_path / "000.png"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "001.png"), np.zeros((4, MAX_SIDE + 1), np.uint8))
    with raises(InputError, "001.png", "frame 1", "side limit"):
        list(pixel_engine.stream(str(tmp_path)))


def test_stream_names_the_frame_a_custom_source_got_wrong(pixel_engine, frame):
    from segrt.runtime.sources import FrameSource

    class Bad(FrameSource):
        name = "bad-camera"

        def __init__(self):
            self.items = [frame, frame.astype(np.float32)]

        def open(self):
            pass

        def read(self):
            return self.items.pop(0) if self.items else None

        def close(self):
            pass

    delivered = []
    with raises(InputError, "bad-camera", "frame 1", "float32"):
        for result in pixel_engine.stream(Bad()):
            delivered.append(result.index)
    assert delivered == [0]


def test_stream_stats_read_from_another_thread(pixel_engine, frame):
    """A reader thread polls every StreamStats field while the pipeline threads update them."""
    from segrt.runtime.sources import FrameSource

    class Frames(FrameSource):
        name = "frames"

        def __init__(self, n):
            self.n = n

        def open(self):
            pass

        def read(self):
            self.n -= 1
            return frame if self.n >= 0 else None

        def close(self):
            pass

    stream = pixel_engine.stream(Frames(200))
    seen: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_stats():
        try:
            while not done.is_set():
                stats = stream.stats
                seen.append(stats.delivered)
                stats.fps, stats.recent_fps, stats.latency_ms(95), stats.infer_ms(50), stats.summary()
                dict(stats.max_queued)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read_stats)
    reader.start()
    try:
        count = sum(1 for _ in stream)
    finally:
        done.set()
        reader.join(10)
    assert not errors, errors
    assert count == 200 == stream.stats.delivered == stream.stats.captured
    assert len(seen) > 1 and seen == sorted(seen)  # counts only grow, as seen from the reader


def test_evaluate_checks_its_arguments():
    from segrt.runtime.evaluate import evaluate

    with raises(ConfigError, "predict", "NoneType"):
        evaluate(None, None)  # type: ignore[arg-type]
    with raises(ConfigError, "dataset", "str"):
        evaluate(lambda f: f, "camvid")  # type: ignore[arg-type]


def test_stream_options_are_checked_by_name(pixel_engine):
    """A misspelt Engine.stream option is a ConfigError naming it, before any source opens; the option list
    the check uses is exactly Stream's keyword parameters."""
    import inspect

    from segrt.runtime.engine import STREAM_OPTIONS

    params = inspect.signature(Stream.__init__).parameters
    assert STREAM_OPTIONS == {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    with raises(ConfigError, "bogus"):
        pixel_engine.stream("no-such-folder-/*.png", bogus=1)


@pytest.mark.parametrize("value", ["no", 1, None])
def test_cuda_graph_must_be_a_bool(value):
    with raises(ConfigError, "cuda_graph"):
        Engine(BUNDLED, cuda_graph=value)
