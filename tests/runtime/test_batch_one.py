"""The ONNX Runtime CPU backend runs a model with a symbolic batch through a session specialised to batch 1.

What must hold: the specialised session really has batch 1 (the speed-up comes from that; its size is measured by
benchmarks/batch_one.py), a batch of N gives what the unspecialised graph gives for the same N frames, lanes
(several batches at once) are specialised too, models whose batch cannot be fixed (static, unnamed, or named like
another axis) run as before, and the batch name is read with or without the onnx package, from the file the
session then opens.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from segrt import Engine
from segrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, batch_dim_to_fix
from segrt.runtime.errors import BackendError, InputError, ModelLoadError


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
        # Gemm where the plain session has MatMul + Add sums in another order: only a pixel whose top two
        # logits tie to ~1e-6 may differ
        assert (np.stack(masks) != want).mean() < 1e-4
        np.testing.assert_array_equal(engine.infer(frames[2]), masks[2])
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
        assert backend.batch_dim is None and backend.input_shape[0] == 1
        out = backend.run(np.zeros((1, 3, 256, 320), np.float32))
        assert out.shape == (1, 11, 64, 80)
    finally:
        backend.close()


def _pixel_model_with_batch_dim(tmp_path, name: str, dim0: str | None):
    """The 1x1-conv pixel model (dynamic H and W) with its input's batch dimension renamed (None: unnamed)."""
    import onnx
    from tiny_models import write_pixel_model

    path = write_pixel_model(tmp_path / f"{name}.onnx")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    if dim0 is not None:
        dims[0].dim_param = dim0
    if dim0 == "H":  # the batch named like the height: fixing it would fix the height too
        dims[2].dim_param = "H"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("dim0", "fixed"), [("N", True), (None, False), ("H", False)])
def test_which_models_get_the_batch_one_session(tmp_path, dim0, fixed):
    path = _pixel_model_with_batch_dim(tmp_path, f"pixel-{dim0}", dim0)
    backend = OnnxRuntimeBackend(path, threads=1)
    try:
        assert (backend.session.get_inputs()[0].shape[0] == 1) is fixed
        assert backend.input_shape[0] is None  # either way the model takes any batch
        x = np.random.default_rng(1).random((3, 3, 20, 24), np.float32)
        want = _generic(path, threads=1).run(None, {"image": x})[0]
        np.testing.assert_allclose(backend.run(x), want, rtol=1e-6, atol=1e-6)
    finally:
        backend.close()


def test_without_the_onnx_package_a_probe_session_reads_the_batch_name(monkeypatch, tiny_frame_onnx):
    """onnx is not a runtime dependency: the batch dimension is then read from a session opened for that."""
    import segrt.runtime.backends.onnxruntime as backend_module

    monkeypatch.setattr(backend_module, "check_external_data", lambda path: None)
    backend = OnnxRuntimeBackend(tiny_frame_onnx, threads=1)
    try:
        assert backend.batch_dim == "batch" and backend.session.get_inputs()[0].shape[0] == 1
    finally:
        backend.close()


def test_a_model_replaced_while_loading_is_refused(monkeypatch, tiny_frame_onnx, tiny_onnx):
    """The batch name comes from one read of the file and the session from another: if they disagree on the
    input, the file changed in between and the backend refuses to run it."""
    import onnx

    import segrt.runtime.backends.onnxruntime as backend_module

    other = onnx.load(str(tiny_onnx), load_external_data=False)
    monkeypatch.setattr(backend_module, "check_external_data", lambda path: other)
    with pytest.raises(ModelLoadError, match="changed while it was being loaded"):
        OnnxRuntimeBackend(tiny_frame_onnx, threads=1)


def test_empty_batch_and_closed_backend_are_typed_errors(tiny_frame_onnx, camvid_frame):
    backend = OnnxRuntimeBackend(tiny_frame_onnx, threads=2)
    with pytest.raises(InputError, match="empty batch"):
        backend.run(np.zeros((0, 8, 8, 3), np.uint8))
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.run(camvid_frame[None])
    with pytest.raises(BackendError, match="closed"):  # and the lanes are not reopened behind the caller's back
        backend.run_many([camvid_frame[None], camvid_frame[None]])
    assert backend._lane_session is None and backend._pool is None


def test_engine_on_a_frame_model_serves_several_threads(tiny_frame_onnx, camvid_frame):
    from concurrent.futures import ThreadPoolExecutor

    frames = [camvid_frame, 255 - camvid_frame, np.ascontiguousarray(camvid_frame[:, ::-1])]
    with Engine(tiny_frame_onnx, threads=2) as engine:
        want = [engine.infer(f) for f in frames]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i: (i % 3, engine.infer(frames[i % 3])), range(12)))
            batches = list(pool.map(lambda _: engine.infer_batch(frames), range(3)))
    for i, mask in got:
        np.testing.assert_array_equal(mask, want[i])
    for masks in batches:
        for mask, w in zip(masks, want):
            np.testing.assert_array_equal(mask, w)
