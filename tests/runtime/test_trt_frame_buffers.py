"""The TensorRT backend's pure parts for frame-form engines, without TensorRT or a GPU: I/O type mapping,
buffer sizing at the profile's largest shape, mask shapes and the batch checks ``run`` makes first.
(The data path itself is walked on the CPU stand-ins in tests/engines/test_trt_frame_form_cpu.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from segrt.runtime.backends.tensorrt import (
    PINNED_BUDGET,
    check_batch,
    expected_mask_shape,
    frame_buffer_bytes,
    nbytes,
    numpy_dtype,
)
from segrt.runtime.errors import InputError, ModelLoadError


@pytest.mark.parametrize("name, dtype", [("UINT8", np.uint8), ("INT32", np.int32), ("FLOAT", np.float32),
                                         ("HALF", np.float16), ("INT64", np.int64)])
def test_tensorrt_types_map_to_numpy_by_name(name, dtype):
    assert numpy_dtype(SimpleNamespace(name=name)) == np.dtype(dtype)


@pytest.mark.parametrize("name", ["BF16", "FP8", "INT4", "FP4", "UINT16"])
def test_types_segrt_does_not_exchange_are_refused_at_load(name):
    with pytest.raises(ModelLoadError, match=f"TensorRT type {name}"):
        numpy_dtype(SimpleNamespace(name=name), "engine.plan: output")


def test_buffers_for_four_1080p_cameras_fit_the_pinned_budget():
    """The profile's largest batch, 4 x 1920x1080 frames: 24.9 MB of uint8 in, 8.3 MB of uint8 mask out
    (33 MB of int32 for > 256 classes); sizes follow the stride."""
    shape = (4, 1080, 1920, 3)
    assert frame_buffer_bytes(shape, np.dtype(np.uint8), 1) == (4 * 1080 * 1920 * 3, 4 * 1080 * 1920)
    assert frame_buffer_bytes(shape, np.dtype(np.int32), 1)[1] == 4 * 1080 * 1920 * 4
    assert frame_buffer_bytes(shape, np.dtype(np.uint8), 4)[1] == 4 * 270 * 480
    assert frame_buffer_bytes(shape, np.dtype(np.uint8), 7)[1] == 4 * 155 * 275  # ceil(1080/7), ceil(1920/7)
    assert sum(frame_buffer_bytes(shape, np.dtype(np.int32), 1)) <= PINNED_BUDGET
    assert sum(frame_buffer_bytes((16, 8192, 4096, 3), np.dtype(np.uint8), 1)) > PINNED_BUDGET  # grows instead


def test_mask_shapes_and_byte_counts():
    assert expected_mask_shape((2, 721, 1281, 3), 2) == (2, 361, 641)
    assert expected_mask_shape((1, 1, 1, 3), 64) == (1, 1, 1)
    assert nbytes((2, 3, 4), np.dtype(np.float32)) == 96
    assert nbytes((8, 8192, 4096, 3), np.dtype(np.uint8)) == 8 * 8192 * 4096 * 3  # no int32 overflow


def test_run_checks_the_batch_layout_by_form():
    frames = np.zeros((2, 36, 48, 3), np.uint8)
    assert check_batch(frames, "frame", (None, None, None, 3)) is frames
    assert check_batch(frames, "frame", (None, 36, 48, 3)) is frames
    refusals = [
        (frames.astype(np.float32), "frame", (None, None, None, 3), "uint8 frame batch"),
        (np.zeros((2, 3, 36, 48), np.uint8), "frame", (None, None, None, 3), r"\(N, H, W, 3\)"),
        (np.zeros((36, 48, 3), np.uint8), "frame", (None, None, None, 3), r"\(N, H, W, 3\)"),
        (frames, "frame", (None, 720, 1280, 3), "does not fit the engine input"),
        (frames, "frame", (1, None, None, 3), "does not fit"),
        (np.zeros((0, 36, 48, 3), np.uint8), "frame", (None, None, None, 3), "empty"),
        (frames, "tensor", (None, 3, None, None), r"\(N, 3, H, W\)"),
        ("frames", "frame", (None, None, None, 3), "numpy batch"),
    ]
    for batch, form, shape, match in refusals:
        with pytest.raises(InputError, match=match):
            check_batch(batch, form, shape)
    tensors = np.zeros((1, 3, 8, 8), np.float32)
    assert check_batch(tensors, "tensor", (None, 3, None, None)) is tensors
