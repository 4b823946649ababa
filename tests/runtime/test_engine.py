"""Engine: frames in, masks at the frame's resolution out; typed errors for bad input and bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import BIKES

from segrt import Engine
from segrt.runtime.errors import BackendUnavailableError, InputError, ModelLoadError, SegrtError


@pytest.fixture(scope="module")
def engine(tiny_onnx):
    return Engine(tiny_onnx)


def test_infer_returns_mask_at_frame_resolution(engine, camvid_frame):
    mask = engine.infer(camvid_frame)
    assert mask.shape == camvid_frame.shape[:2] and mask.dtype == np.uint8
    assert mask.max() < len(engine.classes)
    assert len(np.unique(mask)) > 1  # a real image through random weights still gives several classes


def test_infer_agrees_with_logits_argmax(engine, camvid_frame):
    import cv2

    logits = engine.logits(camvid_frame)
    assert logits.shape == (11, 64, 80)
    small = cv2.resize(camvid_frame, (80, 64))  # frame size == logit size: the mask is the plain argmax
    assert np.array_equal(engine.infer(small), engine.logits(small).argmax(0).astype(np.uint8))
    full = engine.infer(camvid_frame)
    # Upsampled-logit argmax agrees with nearest-upsampled low-res labels on most pixels.
    nearest = cv2.resize(logits.argmax(0).astype(np.uint8), (480, 360), interpolation=cv2.INTER_NEAREST)
    assert (full == nearest).mean() > 0.9


def test_batch_equals_single(engine, camvid_frame):
    other = np.ascontiguousarray(camvid_frame[::-1])
    batch = engine.infer_batch([camvid_frame, other, camvid_frame[:200, :300]])
    assert np.array_equal(batch[0], engine.infer(camvid_frame))
    assert np.array_equal(batch[1], engine.infer(other))
    assert batch[2].shape == (200, 300)


def test_metadata_properties(engine):
    assert engine.input_size == (256, 320)
    assert len(engine.palette) == len(engine.classes) == 11
    assert engine.backend_name == "onnxruntime:cpu"


def test_grayscale_and_bgra_follow_the_documented_rule(engine, camvid_frame):
    import cv2

    gray = cv2.cvtColor(camvid_frame, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(engine.infer(gray), engine.infer(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
    bgra = cv2.cvtColor(camvid_frame, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(engine.infer(bgra), engine.infer(camvid_frame))
    view = camvid_frame[:, ::2]  # non-contiguous view
    assert engine.infer(view).shape == view.shape[:2]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 10, 3), np.float32), "dtype"),
    (np.zeros((10, 10, 2), np.uint8), "channels"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((2, 10, 10, 3, 1), np.uint8), "shape"),
    ("frame.png", "numpy array"),
])
def test_bad_frames_raise_input_error(engine, bad, match):
    with pytest.raises(InputError, match=match):
        engine.infer(bad)


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Engine(tmp_path / "missing.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(ModelLoadError, match="corrupt.onnx: (not a readable ONNX model|ONNX Runtime cannot load)"):
        Engine(tmp_path / "corrupt.onnx")
    with pytest.raises(ModelLoadError, match="bundled"):
        Engine("no-such-model")
    with pytest.raises(BackendUnavailableError):
        Engine(tmp_path / "corrupt.onnx", backend="warp-drive")


def test_every_entry_point_raises_a_typed_error_naming_the_argument(tmp_path, tiny_onnx):
    """One hostile call per public entry point: the exact SegrtError subclass, the argument in the message
    (tests/runtime/test_arguments.py has the full tables). Uses the bundled model: no torch."""
    from segrt.runtime.errors import ConfigError, SourceError
    from segrt.runtime.models import models_dir
    from segrt.runtime.sources import open_source
    from segrt.runtime.stream import Stream

    engine = Engine(models_dir() / "camvid-b0.onnx", threads=1)
    frame = np.zeros((8, 8, 3), np.uint8)
    calls = [
        (lambda: Engine(None), ModelLoadError, "model"),
        (lambda: Engine(tmp_path), ModelLoadError, "is a directory"),
        (lambda: Engine(models_dir() / "camvid-b0.onnx", threads="2"), ConfigError, "threads"),
        (lambda: Engine(models_dir() / "camvid-b0.onnx", device=1.5), ConfigError, "device"),
        (lambda: engine.infer(frame.astype(np.float64)), InputError, "frame dtype"),
        (lambda: Engine(tiny_onnx).logits(frame[:, :, :2]), InputError, "frame has 2 channels"),
        (lambda: engine.logits(frame), ConfigError, "--form logits"),  # the bundled model is frame form
        (lambda: engine.infer_batch(None), InputError, "frames"),
        (lambda: engine.infer_batch(frame), InputError, "single array"),
        (lambda: engine.infer_batch([frame, "x"]), InputError, "frames[1]"),
        (lambda: engine.stream(frame), SourceError, "source"),
        (lambda: Stream(engine, str(tmp_path), queue_size="2"), ConfigError, "queue_size"),
        (lambda: open_source(str(tmp_path), fps=-1), ConfigError, "fps"),
    ]
    for call, error, name in calls:
        with pytest.raises(SegrtError) as info:
            call()
        assert type(info.value) is error and name in str(info.value), f"{type(info.value).__name__}: {info.value}"


def test_runtime_runs_without_torch(tiny_onnx, camvid_root):
    """The robot-side runtime must import and run with torch absent."""
    code = f"""
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
import glob, cv2
from segrt import Engine
from segrt.runtime import overlay, datasets, metrics, evaluate
e = Engine({str(tiny_onnx)!r})
f = cv2.imread(sorted(glob.glob({str(camvid_root / 'val' / '*.png')!r}))[0])
m = e.infer(f)
assert m.shape == f.shape[:2]
assert 'torch' not in {{k for k, v in sys.modules.items() if v is not None}}
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_overlay_colours_each_class(engine, camvid_frame):
    from segrt.runtime.overlay import colorize, overlay

    mask = engine.infer(camvid_frame)
    colour = colorize(mask, engine.palette)
    r, g, b = engine.palette[int(mask[0, 0])]
    assert tuple(colour[0, 0]) == (b, g, r)
    blended = overlay(camvid_frame, mask, engine.palette, alpha=0.5)
    assert blended.shape == camvid_frame.shape and blended.dtype == np.uint8


def test_several_frames_run_concurrently_on_the_cpu_and_equal_one_at_a_time(bikes_frames_for_lanes):
    """On ONNX Runtime's CPU provider a batch of frames is split over one single-threaded run per core
    (benchmarks/multicam.py: faster than one multi-threaded run after another); every mask is the one that frame
    gets alone, in order."""
    from segrt.runtime.models import models_dir

    frames = bikes_frames_for_lanes
    with Engine(models_dir() / "camvid-b0.onnx", threads=2) as engine:
        assert engine.backend.lanes == 2
        alone = [engine.infer(f) for f in frames]
        calls: list[int] = []
        run_many = engine.backend.run_many
        engine.backend.run_many = lambda batches: calls.append(len(batches)) or run_many(batches)
        together = engine.infer_batch(frames)
    assert calls == [2]  # four frames of one size: two batches of two, run at once
    assert all(np.array_equal(a, b) for a, b in zip(alone, together, strict=True))
    with Engine(models_dir() / "camvid-b0.onnx", threads=1) as engine:
        assert engine.backend.lanes == 1  # threads=1 means one core: nothing runs beside it


@pytest.fixture
def bikes_frames_for_lanes():
    import cv2

    cap = cv2.VideoCapture(str(BIKES))
    frames = [cap.read()[1] for _ in range(4)]
    cap.release()
    assert all(f is not None for f in frames)
    return frames
