"""The ONNX Runtime CPU backend runs a model with a symbolic batch through a session specialised to batch 1.

What must hold: the specialised session really has batch 1 (the speed-up comes from that; its size is measured in
benchmarks/post_forms.py and benchmarks/multicam.py), a batch of N gives what the unspecialised graph gives for
the same N frames, lanes (several batches at once) are specialised too, and models whose batch cannot be fixed
(static, unnamed, or named like another axis) run as before.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from segrt import Engine
from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, batch_dim_to_fix


@pytest.mark.parametrize(("shape", "expected"), [
    (["batch", "height", "width", 3], "batch"),
    (["s77", 3, 384, 512], "s77"),
    ([1, 3, 256, 320], None),  # static
    ([None, 3, 256, 320], None),  # unnamed
    (["", 3, 256, 320], None),
    (["N", 3, "N", "N"], None),  # fixing N would fix H and W too
    ([], None),
    (None, None),
])
def test_batch_dim_to_fix(shape, expected):
    assert batch_dim_to_fix(shape) == expected


def _generic(path, threads=2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_logits_model_runs_a_batch_frame_by_frame_on_a_batch_one_session(bundled_logits_onnx):
    backend = OnnxRuntimeBackend(bundled_logits_onnx, threads=2)
    try:
        assert backend.input_shape[0] is None  # the model's batch is dynamic: Engine batches freely
        assert backend.session.get_inputs()[0].shape[0] == 1  # and the session runs batch 1
        x = np.random.default_rng(0).normal(size=(3, 3, 384, 512)).astype(np.float32)
        got = backend.run(x)
        want = _generic(bundled_logits_onnx).run(None, {backend.input_name: x})[0]
        assert got.shape == want.shape == (3, 11, 96, 128)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert (got.argmax(1) == want.argmax(1)).mean() > 0.9999
        # each frame on its own: the same values as inside the batch
        np.testing.assert_array_equal(backend.run(x[1:2])[0], got[1])
    finally:
        backend.close()


def test_frame_model_masks_match_the_unspecialised_graph(tiny_frame_onnx, camvid_frame):
    engine = Engine(tiny_frame_onnx, threads=2)
    try:
        assert engine.backend.session.get_inputs()[0].shape[0] == 1
        frames = np.stack([camvid_frame, camvid_frame[::-1].copy(), 255 - camvid_frame])
        masks = engine.infer_batch(frames)
        want = _generic(tiny_frame_onnx).run(None, {"frame": frames})[0]
        assert [m.shape for m in masks] == [camvid_frame.shape[:2]] * 3
        np.testing.assert_array_equal(np.stack(masks), want)
        np.testing.assert_array_equal(engine.infer(frames[2]), want[2])
    finally:
        engine.close()


def test_lanes_are_specialised_too(tiny_frame_onnx, camvid_frame):
    backend = OnnxRuntimeBackend(tiny_frame_onnx, threads=2)
    try:
        assert backend.lanes == 2
        batches = [camvid_frame[None], np.stack([255 - camvid_frame, camvid_frame])]
        outs = backend.run_many(batches)
        lane_session, _ = backend._lanes()
        assert lane_session.get_inputs()[0].shape[0] == 1
        np.testing.assert_array_equal(outs[0][0], outs[1][1])
        assert outs[1].shape[0] == 2
    finally:
        backend.close()


def test_static_batch_model_is_left_as_it_is(tiny_onnx):
    backend = OnnxRuntimeBackend(tiny_onnx, threads=1)
    try:
        assert backend._batch_dim is None and backend.input_shape[0] == 1
        out = backend.run(np.zeros((1, 3, 256, 320), np.float32))
        assert out.shape == (1, 11, 64, 80)
    finally:
        backend.close()
