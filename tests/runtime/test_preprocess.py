"""Network output -> mask and the frame bounds, unit by unit (no model, no torch)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segrt.runtime import preprocess
from segrt.runtime.errors import BackendError, InputError
from segrt.runtime.frames import as_bgr, frame_size
from segrt.runtime.preprocess import frames_to_input, labels_to_mask, logits_to_mask, mask_dtype


def random_logits(k: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, h, w)).astype(np.float32)


def upsampled_argmax(logits: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every channel resized on its own with OpenCV, then (argmax, top-two margin)."""
    up = np.stack([cv2.resize(np.ascontiguousarray(c), out_hw[::-1], interpolation=cv2.INTER_LINEAR) for c in logits])
    top2 = np.sort(up, axis=0)[-2:]
    return up.argmax(0), top2[1] - top2[0]


@pytest.mark.parametrize("size, words", [
    ((8192, 1), None), ((1, 8192), None), ((8192, 4096), None), ((4320, 7680), None),  # 8K UHD fits
    ((8193, 1), "side limit"), ((1, 8193), "side limit"), ((8192, 4097), "33562624 pixels"),
    ((6000, 6000), "36000000 pixels"),
])
def test_documented_frame_bounds(size, words):
    """README "Guarantees": sides 1..8192 and at most 33,554,432 pixels; checked from the shape alone."""
    frame = np.broadcast_to(np.uint8(0), size + (3,))
    if words is None:
        assert frame_size(frame) == size + (3,)
    else:
        with pytest.raises(InputError, match=words):
            frame_size(frame, "frame 7")


def test_as_bgr_follows_the_rule_on_a_small_frame():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(as_bgr(grey), np.repeat(grey[:, :, None], 3, axis=2))
    bgra = np.arange(48, dtype=np.uint8).reshape(3, 4, 4)
    assert np.array_equal(as_bgr(bgra), bgra[:, :, :3]) and as_bgr(bgra).flags.c_contiguous
    view = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)[:, ::2]
    out = as_bgr(view)
    assert out.flags.c_contiguous and np.array_equal(out, view)


def test_frames_to_input_is_normalised_rgb():
    frame = np.zeros((2, 3, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    x = frames_to_input([frame], None, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32
    expected = [(30 / 255 - 0.1) / 0.5, (20 / 255 - 0.2) / 0.25, (10 / 255 - 0.3) / 0.125]  # R, G, B
    assert np.allclose(x[0, :, 0, 0], expected, atol=1e-6)


def test_within_budget_the_mask_is_one_opencv_resize_exactly():
    """Masks stay identical to earlier releases: one resize of all channels, then argmax."""
    logits = random_logits(11)
    hwk = np.ascontiguousarray(logits.transpose(1, 2, 0))
    expected = cv2.resize(hwk, (320, 240), interpolation=cv2.INTER_LINEAR).argmax(2)
    mask = logits_to_mask(logits, (240, 320))
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert np.array_equal(logits_to_mask(logits, (24, 32)), logits.argmax(0))  # same size: no resize


@pytest.mark.parametrize("k, budget", [(11, 4 * 240 * 320 * 3), (11, 1), (150, 1 << 30), (300, 4 * 240 * 320 * 40)])
def test_chunked_upsampling_gives_the_reference_mask(monkeypatch, k, budget):
    """Over the memory budget or OpenCV's channel limit the logits are upsampled a few channels at a time;
    the mask is the reference argmax except where the top two are within OpenCV's rounding."""
    monkeypatch.setattr(preprocess, "UPSAMPLE_BUDGET", budget)
    logits = random_logits(k, seed=k)
    mask = logits_to_mask(logits, (240, 320))
    expected, margin = upsampled_argmax(logits, (240, 320))
    assert mask.dtype == mask_dtype(k) and mask.shape == (240, 320)
    assert np.all((mask == expected) | (margin < 1e-4))
    assert (mask == expected).mean() > 0.999


def test_nan_logits_raise_instead_of_a_mask():
    logits = random_logits(4)
    logits[2, 5, 5] = np.nan
    with pytest.raises(BackendError, match="NaN"):
        logits_to_mask(logits, (48, 64))


@pytest.mark.parametrize("k, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16)])
def test_mask_dtype(k, dtype):
    assert mask_dtype(k) is dtype


def test_more_classes_than_a_uint16_mask_holds_are_refused():
    from segrt.runtime.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="65537 classes"):
        mask_dtype(65537)


class ResizeSpy:
    """Records the channel count of every cv2.resize call preprocess makes."""

    def __init__(self, monkeypatch):
        self.channels: list[int] = []
        real = cv2.resize

        def resize(src, *args, **kwargs):
            self.channels.append(1 if src.ndim == 2 else src.shape[2])
            return real(src, *args, **kwargs)

        monkeypatch.setattr(preprocess.cv2, "resize", resize)


@pytest.mark.parametrize("k, budget_channels, calls", [(11, 11, [11]), (11, 3, [3, 3, 3, 2]), (11, 1, [1] * 11),
                                                       (150, 150, [128, 22])])
def test_upsampling_holds_at_most_the_budget(monkeypatch, k, budget_channels, calls):
    """The memory bound: each resize gets at most budget / (4 * H * W) channels (and OpenCV's limit)."""
    monkeypatch.setattr(preprocess, "UPSAMPLE_BUDGET", 4 * 240 * 320 * budget_channels)
    spy = ResizeSpy(monkeypatch)
    logits_to_mask(random_logits(k), (240, 320))
    assert spy.channels == calls


def test_labels_outside_the_classes_raise():
    labels = np.zeros((4, 5), np.int64)
    assert labels_to_mask(labels, (8, 10), num_classes=11).shape == (8, 10)
    for bad in (11, -1, 300):
        labels[1, 2] = bad
        with pytest.raises(BackendError, match=str(bad)):
            labels_to_mask(labels, (8, 10), num_classes=11)
    with pytest.raises(BackendError, match="float32"):
        labels_to_mask(np.zeros((4, 5), np.float32), (8, 10), num_classes=11)


def test_labels_of_many_classes_keep_their_value():
    labels = np.array([[299, 5], [0, 65535]], np.int64)
    mask = labels_to_mask(labels, (4, 4), num_classes=65536)
    assert mask.dtype == np.uint16 and mask[0, 0] == 299 and mask[3, 3] == 65535


def test_messages_begin_with_the_name_of_the_frame():
    """Callers and logs see which frame it was first: the default name is "frame"."""
    with pytest.raises(InputError, match=r"^frame dtype is float32; expected uint8"):
        as_bgr(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(InputError, match=r"^frame must be a numpy array \(HxWx3 uint8 BGR\), got str 'x'$"):
        as_bgr("x")
    with pytest.raises(InputError, match=r"^frames\[4\] has 2 channels"):
        frame_size(np.zeros((2, 2, 2), np.uint8), "frames[4]")
    with pytest.raises(InputError, match=r"^frame is empty"):
        frame_size(np.zeros((0, 2), np.uint8))


def test_a_camera_frame_is_upsampled_in_one_call(monkeypatch):
    """At the default budget a 1920x1080 mask of 19 classes takes one resize: the exact-as-before path."""
    spy = ResizeSpy(monkeypatch)
    logits_to_mask(random_logits(19, 8, 8), (1080, 1920))
    assert spy.channels == [19]


def test_ties_across_chunks_keep_the_first_class(monkeypatch):
    """np.argmax's rule (lowest class wins a tie) holds when the tied classes fall in different chunks."""
    monkeypatch.setattr(preprocess, "UPSAMPLE_BUDGET", 4 * 16 * 16)  # one channel per resize
    logits = np.zeros((4, 8, 8), np.float32)
    logits[1] = logits[3] = 1.0
    assert (logits_to_mask(logits, (16, 16)) == 1).all()


def test_labels_without_a_class_count_are_only_resized():
    labels = np.array([[0, 7], [30, 2]], np.int64)
    mask = labels_to_mask(labels, (2, 2))  # callers without a class count (benchmarks) get uint8 as before
    assert mask.dtype == np.uint8 and mask.tolist() == [[0, 7], [30, 2]]
    with pytest.raises(BackendError, match=r"label 11, outside 0\.\.10 for its 11 classes"):
        labels_to_mask(np.full((2, 3), 11), (2, 3), num_classes=11)
