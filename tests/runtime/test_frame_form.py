"""Frame-form models (issue 18): uint8 (N, H, W, 3) BGR frames in, (N, Hm, Wm) masks out, pre and
post-processing inside the graph. The Engine runs them without numpy pre/post; its masks must agree with
the tensor-form reference path (runtime/preprocess.py), and a graph that lies about its form, mask size,
dtype or labels is refused (ModelLoadError at load, BackendError at infer), never turned into a mask.

Graphs are built with onnx.helper (tests/runtime/frame_models.py); helper A's exported fixture
tests/fixtures/segformer-tiny-frame.onnx is used where it exists.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from frame_models import frame_graph, write_frame_model
from onnx import TensorProto, helper
from tiny_models import PIXEL_BIAS, PIXEL_WEIGHTS, reference_mask, write_pixel_model

from segrt import Engine
from segrt.runtime import engine as engine_module
from segrt.runtime.errors import BackendError, ConfigError, InputError, ModelLoadError
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import logits_to_mask

REPO = Path(__file__).resolve().parents[2]
FRAME_FIXTURE = REPO / "tests" / "fixtures" / "segformer-tiny-frame.onnx"
NETWORK = (256, 320)  # the tiny fixture's network size


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a == b).mean())


def camvid_frames(root: Path, n: int) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted((root / "val").glob("*.png"))[:n]]


@pytest.fixture(scope="module")
def dynamic_frame_engine(tmp_path_factory):
    """The pixel model as a frame-form graph whose network runs at the frame's own size."""
    return Engine(write_frame_model(tmp_path_factory.mktemp("frame") / "dyn.onnx"))


# ------------------------------------------------------------------------------------------ agreement


def test_frame_form_mask_agrees_with_the_tensor_form_reference_on_camvid(tmp_path, camvid_root):
    """Resize to the network size, normalise, upsample and argmax in the graph vs the same weights through
    the reference post-processing (preprocess.logits_to_mask) of the float-resized frame: the same masks.
    Against today's Engine path, which resizes the uint8 frame with OpenCV (rounded to uint8), a per-pixel
    colour classifier with random weights (ties everywhere in colour space, unlike a real network) still
    agrees on >= 99%."""
    weights = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    bias = np.random.default_rng(1).normal(size=11).astype(np.float32) * 0.1
    frame_engine = Engine(write_frame_model(tmp_path / "frame.onnx", weights, bias, input_size=NETWORK))
    tensor_engine = Engine(write_pixel_model(tmp_path / "tensor.onnx", weights, bias, input_hw=NETWORK))
    assert frame_engine.form == "frame" and tensor_engine.form == "tensor"
    for frame in camvid_frames(camvid_root, 3):
        mask = frame_engine.infer(frame)
        small = cv2.resize(frame.astype(np.float32), NETWORK[::-1], interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray((small[:, :, ::-1] / 255.0).transpose(2, 0, 1)[None], dtype=np.float32)
        reference = logits_to_mask(tensor_engine.backend.run(x)[0], frame.shape[:2], np.uint8)
        assert mask.dtype == np.uint8 and mask.shape == frame.shape[:2]
        assert len(np.unique(reference)) > 2  # the comparison covers real class boundaries
        assert agreement(mask, reference) >= 0.9999
        assert agreement(mask, tensor_engine.infer(frame)) >= 0.99


def test_frame_form_at_the_frames_own_size_matches_an_independent_reference(dynamic_frame_engine, camvid_frame):
    mask = dynamic_frame_engine.infer(camvid_frame)
    expected, ambiguous = reference_mask(camvid_frame)
    assert mask.shape == camvid_frame.shape[:2]
    assert np.array_equal(mask[~ambiguous], expected[~ambiguous])


@pytest.mark.skipif(not FRAME_FIXTURE.is_file(), reason="helper A's frame-form fixture is not committed yet")
def test_the_exported_frame_fixture_agrees_with_the_tensor_fixture_on_camvid(tiny_onnx, camvid_root):
    frame_engine, tensor_engine = Engine(FRAME_FIXTURE), Engine(tiny_onnx)
    assert frame_engine.form == "frame" and frame_engine.classes == tensor_engine.classes
    for frame in camvid_frames(camvid_root, 3):
        assert agreement(frame_engine.infer(frame), tensor_engine.infer(frame)) >= 0.995


@pytest.mark.parametrize("stride", [2, 3, 8])
def test_output_stride_gives_a_smaller_mask_of_upsampled_logits(tmp_path, camvid_frame, stride):
    engine = Engine(write_frame_model(tmp_path / "s.onnx", stride=stride))
    h, w = camvid_frame.shape[:2]
    mask = engine.infer(camvid_frame)
    assert engine.output_stride == stride
    assert mask.shape == engine.mask_size((h, w)) == (-(-h // stride), -(-w // stride))
    rgb = camvid_frame[:, :, ::-1].astype(np.float32) / 255.0
    logits = rgb @ PIXEL_WEIGHTS.T + PIXEL_BIAS  # HxWxK at the frame's size, then bilinear to the mask size
    expected = cv2.resize(logits, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR).argmax(2)
    assert agreement(mask, expected.astype(np.uint8)) >= 0.995


# ------------------------------------------------------------------------------------------ batches


def test_a_batch_of_mixed_sizes_and_layouts_gives_each_frame_its_own_mask(dynamic_frame_engine, camvid_frame):
    gray = cv2.cvtColor(camvid_frame, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(camvid_frame, cv2.COLOR_BGR2BGRA)
    small = np.ascontiguousarray(camvid_frame[:200, :300])
    frames = [camvid_frame, small, camvid_frame[:, ::-1], gray, bgra, small[::2, ::2]]
    masks = dynamic_frame_engine.infer_batch(frames)
    assert [m.shape for m in masks] == [f.shape[:2] for f in frames]
    for frame, mask in zip(frames, masks, strict=True):
        assert np.array_equal(mask, dynamic_frame_engine.infer(frame))
    assert np.array_equal(masks[3], dynamic_frame_engine.infer(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
    assert np.array_equal(masks[4], masks[0])  # BGRA drops alpha
    # every mask is its own array: writing into one cannot change another
    assert not any(np.shares_memory(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])


def test_frames_of_one_size_run_as_one_batch_and_long_lists_in_chunks(tmp_path, camvid_frame, monkeypatch):
    engine = Engine(write_frame_model(tmp_path / "m.onnx"))
    monkeypatch.setattr(engine.backend, "lanes", 1)  # one batch at a time (lanes: tests/runtime/test_engine.py)
    calls: list[tuple] = []
    run = engine.backend.run
    monkeypatch.setattr(engine.backend, "run", lambda x: calls.append((x.shape, x.dtype)) or run(x))
    frames = [camvid_frame, camvid_frame[::-1], camvid_frame[:100], camvid_frame]
    masks = engine.infer_batch(frames)
    assert sorted(calls) == sorted([((3, 360, 480, 3), np.uint8), ((1, 100, 480, 3), np.uint8)])
    calls.clear()
    # chunks are bounded in bytes of uint8 input: two frames' worth per chunk here
    monkeypatch.setattr(engine_module, "MAX_BATCH_BYTES", 2 * camvid_frame.size)
    assert all(np.array_equal(a, b) for a, b in zip(engine.infer_batch(frames), masks, strict=True))
    assert sorted(c[0][0] for c in calls) == [1, 1, 2]


def test_a_fixed_frame_size_model_names_both_sizes(tmp_path, camvid_frame):
    path = write_frame_model(tmp_path / "fixed.onnx", frame_hw=(360, 480), meta={"frame_size": None})
    engine = Engine(path)
    assert engine.frame_size == (360, 480)  # taken from the static graph when the record leaves it open
    assert engine.infer(camvid_frame).shape == (360, 480)
    with pytest.raises(InputError) as info:
        engine.infer(camvid_frame[:200, :300])
    assert "300x200" in str(info.value) and "480x360" in str(info.value) and "export" in str(info.value)
    with pytest.raises(InputError, match=r"frames\[1\] is 300x200"):
        engine.infer_batch([camvid_frame, camvid_frame[:200, :300]])


def test_a_declared_frame_size_must_match_the_static_graph(tmp_path):
    path = write_frame_model(tmp_path / "m.onnx", frame_hw=(360, 480), meta={"frame_size": (720, 1280)})
    with pytest.raises(ModelLoadError, match="'frame_size'.*720x1280.*360x480"):
        Engine(path)


# ------------------------------------------------------------------------------------------ mask dtypes


@pytest.mark.parametrize("graph_dtype", [np.uint16, np.int32])
def test_more_than_256_classes_give_uint16_masks(tmp_path, camvid_frame, graph_dtype):
    k = 300
    weights = np.random.default_rng(2).normal(size=(k, 3)).astype(np.float32)
    bias = np.random.default_rng(3).normal(size=k).astype(np.float32)
    engine = Engine(write_frame_model(tmp_path / "m.onnx", weights, bias, mask_dtype=graph_dtype))
    mask = engine.infer(camvid_frame)
    assert mask.dtype == np.uint16 == engine.mask_dtype
    expected, ambiguous = reference_mask(camvid_frame, weights, bias)
    assert expected.max() > 255  # labels past uint8 are present
    assert np.array_equal(mask[~ambiguous], expected[~ambiguous])


def test_an_int32_mask_of_few_classes_comes_back_as_uint8(tmp_path, camvid_frame, dynamic_frame_engine):
    engine = Engine(write_frame_model(tmp_path / "m.onnx", mask_dtype=np.int32))
    mask = engine.infer(camvid_frame)
    assert mask.dtype == np.uint8 and np.array_equal(mask, dynamic_frame_engine.infer(camvid_frame))


@pytest.mark.parametrize("graph_dtype, match", [(np.int64, "masks are uint8, uint16, int32"),
                                                (np.float32, "masks are uint8, uint16, int32")])
def test_a_mask_of_another_dtype_is_refused_at_load(tmp_path, graph_dtype, match):
    with pytest.raises(ModelLoadError, match=match):
        Engine(write_frame_model(tmp_path / "m.onnx", mask_dtype=graph_dtype))


def test_uint8_masks_for_more_than_256_classes_are_refused_at_load(tmp_path):
    weights = np.ones((300, 3), np.float32)
    with pytest.raises(ModelLoadError, match="'classes'.*300 classes.*uint8"):
        Engine(write_frame_model(tmp_path / "m.onnx", weights, np.zeros(300, np.float32)))


# ------------------------------------------------------------------------------------------ lying graphs


def test_a_graph_returning_labels_past_its_classes_raises_backend_error(tmp_path, camvid_frame):
    engine = Engine(write_frame_model(tmp_path / "m.onnx", lie=4))  # labels 4..7 for 4 classes
    with pytest.raises(BackendError, match="outside 0..3"):
        engine.infer(camvid_frame)


def test_a_dynamic_graph_whose_mask_size_contradicts_its_stride_raises_backend_error(tmp_path, camvid_frame):
    engine = Engine(write_frame_model(tmp_path / "m.onnx", stride=2, stride_in_graph=1))
    with pytest.raises(BackendError, match=r"shape \(1, 360, 480\).*expected \(1, 180, 240\)"):
        engine.infer(camvid_frame)


def test_a_static_graph_whose_mask_size_contradicts_its_stride_is_refused_at_load(tmp_path):
    with pytest.raises(ModelLoadError, match="'output_stride' is 4.*mask height is 180"):
        Engine(write_frame_model(tmp_path / "m.onnx", frame_hw=(360, 480), stride=4, stride_in_graph=2))


def test_frame_metadata_on_a_float_tensor_graph_is_refused(tmp_path):
    path = write_pixel_model(tmp_path / "tensor.onnx")
    import onnx

    model = onnx.load(str(path))
    ModelMetadata(classes=["a", "b", "c", "d"], input_size=None, form="frame").to_onnx(model)
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="'form' is 'frame'.*float32"):
        Engine(path)


def test_tensor_metadata_on_a_frame_graph_is_refused(tmp_path):
    model = frame_graph()
    ModelMetadata(classes=["a", "b", "c", "d"], input_size=None, output="labels").to_onnx(model)
    import onnx

    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelLoadError, match="'form' is 'tensor'.*uint8"):
        Engine(tmp_path / "m.onnx")


def test_a_uint8_graph_in_nchw_layout_is_refused(tmp_path):
    import onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "nchw",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ModelMetadata(classes=["a", "b"], input_size=None, form="frame").to_onnx(model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ModelLoadError, match=r"not \(N, H, W, 3\)"):
        Engine(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------ engine surface


def test_logits_of_a_frame_model_is_a_config_error_naming_the_logits_export(dynamic_frame_engine, camvid_frame):
    with pytest.raises(ConfigError, match="--form logits"):
        dynamic_frame_engine.logits(camvid_frame)


def test_mask_size_is_checked_and_follows_the_stride(tmp_path):
    engine = Engine(write_frame_model(tmp_path / "m.onnx", stride=4))
    assert engine.mask_size((1080, 1920)) == (270, 480) and engine.mask_size((7, 9)) == (2, 3)
    for bad in [(0, 5), (5,), "1080x1920", (1.5, 2), None]:
        with pytest.raises(InputError, match="frame_hw"):
            engine.mask_size(bad)


def test_the_tensor_form_engine_is_unchanged(tiny_onnx, camvid_frame):
    engine = Engine(tiny_onnx)
    assert engine.form == "tensor" and engine.output_stride == 1 and engine.frame_size is None
    assert engine.mask_size((360, 480)) == (360, 480)
    assert engine.logits(camvid_frame).shape == (11, 64, 80)
