"""Fuzzing what callers and files feed segrt: every frame either works under the documented rule
(runtime/frames.py: uint8 only; HxW and HxWx1 replicated to BGR, HxWx4 drops alpha; any strides;
sides 1..MAX_SIDE, at most MAX_PIXELS) or raises a typed SegrtError; nothing else escapes, and the
engine still gives the same answer afterwards. Example counts are small: the suite runs on a busy
2-core machine.

The oracle is independent of the code under test: a tiny 1x1-conv model (tests/runtime/tiny_models.py)
whose mask numpy computes from a plainly written copy of the frame rule, never through ``as_bgr``."""

from __future__ import annotations

import string

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tiny_models import plain_bgr, reference_mask, write_pixel_model

from segrt.runtime.engine import Engine
from segrt.runtime.errors import InputError, SegrtError, SourceError
from segrt.runtime.frames import MAX_PIXELS, MAX_SIDE
from segrt.runtime.sources import open_source, parse_source

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
          np.bool_, np.complex64]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    """A dynamic-size pixel model: frames run at their own size, so the reference needs no resizing."""
    return Engine(write_pixel_model(tmp_path_factory.mktemp("pixel") / "pixel.onnx"), threads=1)


@pytest.fixture(scope="module")
def reference(engine, camvid_frame):
    """The engine's answer on a real frame before any fuzzing, to compare with afterwards."""
    small = cv2.resize(camvid_frame, (160, 120))
    mask = engine.infer(small)
    expected, ambiguous = reference_mask(plain_bgr(small))
    assert np.all((mask == expected) | ambiguous) and len(np.unique(mask)) > 1
    return small, mask


def is_valid(frame: np.ndarray) -> bool:
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
        return False
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        return False
    h, w = frame.shape[:2]
    return 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE and h * w <= MAX_PIXELS


def assert_reference_mask(frame: np.ndarray, mask: np.ndarray) -> None:
    """``mask`` is what the documented rule and the model give for ``frame``, computed independently."""
    expected, ambiguous = reference_mask(plain_bgr(frame))
    assert mask.shape == frame.shape[:2] and mask.dtype == np.uint8
    wrong = (mask != expected) & ~ambiguous
    assert not wrong.any(), f"{int(wrong.sum())} of {mask.size} pixels differ from the reference"


ANY_DTYPE = st.sampled_from(DTYPES)


@st.composite
def views(draw, dtypes=ANY_DTYPE, max_side=40):
    """Arrays of any small shape and dtype, then turned into a strided, flipped, transposed, Fortran,
    broadcast or read-only view, the kinds of arrays callers hand over after slicing."""
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.integers(0, max_side), min_size=ndim, max_size=ndim)))
    if ndim == 3 and draw(st.booleans()):
        shape = shape[:2] + (draw(st.sampled_from([1, 2, 3, 4, 5])),)
    dtype = draw(dtypes)
    base = draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False,
                                                                  allow_infinity=False), fill=st.nothing()))
    kind = draw(st.sampled_from(["plain", "step", "flip", "transpose", "fortran", "broadcast", "readonly", "channel"]))
    if kind == "step" and base.ndim >= 2:
        base = base[:: draw(st.integers(1, 3)), :: draw(st.integers(1, 3))]
    elif kind == "flip" and base.ndim >= 1:
        base = base[::-1]
    elif kind == "transpose" and base.ndim >= 2:
        base = base.swapaxes(0, 1)
    elif kind == "fortran":
        base = np.asfortranarray(base)
    elif kind == "broadcast" and base.ndim >= 1:
        base = np.broadcast_to(base[:1], base.shape)  # zero stride along the first axis, read-only
    elif kind == "readonly":
        base.flags.writeable = False
    elif kind == "channel" and base.ndim == 3 and base.shape[2] >= 3:
        base = base[:, :, 2::-1]  # a channel-reversed view (RGB from BGR)
    return base


def check_frame(engine: Engine, frame) -> None:
    before = frame.copy() if isinstance(frame, np.ndarray) else None
    if isinstance(frame, np.ndarray) and is_valid(frame):
        assert_reference_mask(frame, engine.infer(frame))
    else:
        with pytest.raises(InputError):
            engine.infer(frame)
    if before is not None:
        assert np.array_equal(frame, before), "the caller's frame was modified"


@FUZZ
@given(frame=views())
def test_any_array_works_or_raises_input_error(engine, frame):
    check_frame(engine, frame)


@FUZZ
@given(frame=views(dtypes=st.just(np.uint8)))
def test_uint8_arrays_of_any_layout(engine, frame):
    check_frame(engine, frame)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(long=st.sampled_from([1, 2, MAX_SIDE - 1, MAX_SIDE, MAX_SIDE + 1, 10 * MAX_SIDE, 2**31]),
       short=st.integers(1, 3), channels=st.sampled_from([0, 1, 3, 4]), tall=st.booleans())
def test_extreme_sizes(engine, long, short, channels, tall):
    shape = (long, short) if tall else (short, long)
    shape += (channels,) if channels else ()
    if long > MAX_SIDE:  # refused from the shape alone: a broadcast view stands in for gigabytes
        frame = np.broadcast_to(np.uint8(3), shape)
    else:
        frame = np.random.default_rng(long + short).integers(0, 256, shape, np.uint8)
    check_frame(engine, frame)


@pytest.mark.parametrize("h, w", [(MAX_SIDE, MAX_PIXELS // MAX_SIDE + 1), (MAX_PIXELS // MAX_SIDE + 1, MAX_SIDE),
                                  (MAX_SIDE, MAX_SIDE), (6000, 6000), (2**30, 2**30)])
def test_frames_over_the_pixel_bound_are_refused(engine, h, w):
    """Each side within MAX_SIDE (except the last case) but the area over MAX_PIXELS."""
    for frame in (np.broadcast_to(np.uint8(0), (h, w)), np.broadcast_to(np.uint8(0), (h, w, 4))):
        with pytest.raises(InputError, match="limit"):
            engine.infer(frame)


@pytest.mark.parametrize("frame", [None, "frame.png", [[1, 2, 3]], 3.5, np.uint8(7), b"\x00" * 12],
                         ids=["None", "str", "list", "float", "scalar", "bytes"])
def test_non_arrays_raise_input_error(engine, frame):
    with pytest.raises(InputError, match="numpy array"):
        engine.infer(frame)


@FUZZ
@given(frames=st.lists(views(dtypes=st.sampled_from([np.uint8, np.uint8, np.float32]), max_side=24),
                       min_size=0, max_size=4))
def test_infer_batch_all_or_nothing(engine, frames):
    if all(is_valid(f) for f in frames):
        masks = engine.infer_batch(frames)
        assert len(masks) == len(frames)
        for frame, mask in zip(frames, masks, strict=True):
            assert_reference_mask(frame, mask)
    else:
        with pytest.raises(InputError):
            engine.infer_batch(frames)


def test_infer_batch_takes_a_4d_array(engine, reference):
    frame, mask = reference
    batch = np.stack([frame, frame[::-1].copy()])
    masks = engine.infer_batch(batch)
    assert np.array_equal(masks[0], mask)
    assert_reference_mask(frame[::-1], masks[1])


def test_engine_answers_the_same_after_fuzzing(engine, reference):
    """Runs after the fuzz tests above (file order): nothing they did changed the engine's answers."""
    frame, mask = reference
    assert np.array_equal(engine.infer(frame), mask)
    assert np.array_equal(engine.infer_batch([frame, frame])[1], mask)


# ------------------------------------------------------------------------------------------ sources
PATHISH = string.printable + "éü\u202e\x00"


@settings(max_examples=80, deadline=None, derandomize=True)
@given(text=st.text(alphabet=PATHISH, max_size=40) | st.text(alphabet=PATHISH, min_size=200, max_size=6000)
       | st.builds(lambda part, n: part * n, st.text(alphabet="ab/.~*?", min_size=1, max_size=4),
                   st.integers(50, 3000)))
def test_any_source_string_parses_or_raises_a_segrt_error(text):
    """Short strings, long strings and long repeated path fragments (past NAME_MAX and PATH_MAX)."""
    try:
        spec = parse_source(text)
    except SegrtError:
        return
    assert spec.kind in ("camera", "csi", "gstreamer", "url", "video", "images")


@settings(max_examples=30, deadline=None, derandomize=True)
@given(index=st.integers(40, 99),
       query=st.dictionaries(st.sampled_from(["width", "height", "fps", "fourcc", "flip"]),
                             st.text(alphabet=string.ascii_letters + string.digits + "-.", max_size=6), max_size=3))
def test_absent_cameras_with_any_options_raise_typed_errors(index, query):
    spec = f"/dev/video{index}?" + "&".join(f"{k}={v}" for k, v in query.items())
    with pytest.raises(SegrtError):
        open_source(spec)


@pytest.fixture(scope="module")
def small_png(camvid_frame) -> bytes:
    return cv2.imencode(".png", cv2.resize(camvid_frame, (48, 36)))[1].tobytes()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_images_in_a_folder_give_frames_or_source_errors(tmp_path_factory, small_png, data):
    blob = bytearray(small_png)
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    blob = blob[: data.draw(st.integers(0, len(blob)))]
    folder = tmp_path_factory.mktemp("images")
    (folder / "000.png").write_bytes(small_png)
    (folder / "001.png").write_bytes(bytes(blob))
    source = open_source(str(folder))
    assert source.read().shape == (36, 48, 3)
    try:
        frame = source.read()
    except SourceError as exc:
        assert "001.png" in str(exc)
    else:
        assume(frame is not None)
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    finally:
        source.close()
