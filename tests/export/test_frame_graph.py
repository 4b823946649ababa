"""The frame form (issue 18): uint8 BGR frame in, mask out, pre/post-processing inside the graph.

Every wrapped export is checked against the float reference path (runtime/preprocess.py: cv2 resize, logits,
bilinear upsampling, argmax) on real CamVid and bikes frames at camera sizes.
"""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segrt.export.passes import frame_graph as fg
from segrt.runtime.errors import ExportError, ExportVerificationError
from segrt.runtime.metadata import METADATA_KEY, ModelMetadata
from segrt.runtime.preprocess import frames_to_input, logits_to_mask
from segrt.runtime.samples import sample_frames

REPO = fg.__file__.rsplit("/export/", 1)[0]
CAMERA_SIZES = [(480, 640), (720, 1280), (1080, 1920)]
MIN_AGREEMENT = fg.MIN_AGREEMENT


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _raw(model: onnx.ModelProto) -> dict:
    return json.loads(next(p.value for p in model.metadata_props if p.key == METADATA_KEY))


def bundled_logits(name: str) -> onnx.ModelProto:
    """The network of a bundled model (the bundled files are the deploy form since issue 18)."""
    model = onnx.load(f"{REPO}/models/{name}.onnx")
    return fg.network_of(model) if fg.is_frame_form(model) else model


@pytest.fixture(scope="module")
def frames(camvid_root) -> list[np.ndarray]:
    """Two CamVid val frames and one real bikes.mp4 frame (its own size, 272x640)."""
    paths = sorted((camvid_root / "val").glob("*.png"))
    return [cv2.imread(str(paths[0])), cv2.imread(str(paths[50])), sample_frames()[0]]


def _at(frames, size):
    return [cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for f in frames]


def _agreement(frame_model, logits_model, frames) -> float:
    return min(fg.frame_agreement(frame_model, logits_model, frames))


@pytest.fixture(scope="module")
def tiny_segformer():
    spec = importlib.util.spec_from_file_location("make_test_model", f"{REPO}/tools/make_test_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def tiny(tiny_onnx) -> onnx.ModelProto:
    return onnx.load(str(tiny_onnx))


# ---------------------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("post", fg.POSTS)
def test_bundled_model_matches_reference_at_camera_sizes(post, frames):
    logits = bundled_logits("camvid-b0")
    framed = fg.to_frame_form(logits, post=post)
    for size in CAMERA_SIZES:
        assert _agreement(framed, logits, _at(frames, size)) >= MIN_AGREEMENT, size
    assert _agreement(framed, logits, sample_frames()) >= MIN_AGREEMENT  # real video frames at their own size


def test_pruned_bundled_model(frames):
    logits = bundled_logits("camvid-b0-p30")
    framed = fg.to_frame_form(logits)
    assert _agreement(framed, logits, _at(frames, (720, 1280))) >= MIN_AGREEMENT


def test_post_forms_agree_with_each_other_exactly(tiny, frames):
    """refine and dense are two computations of argmax(bilinear(logits)): equal but for float near-ties."""
    batch = _at(frames, (720, 1280))
    refine, dense = (_session(fg.to_frame_form(tiny, post=p)) for p in fg.POSTS)
    for frame in batch:
        a = refine.run(None, {"frame": frame[None]})[0]
        b = dense.run(None, {"frame": frame[None]})[0]
        assert a.shape == b.shape == (1, 720, 1280) and a.dtype == np.uint8
        assert (a == b).mean() >= 0.9999


def _noisy(num_classes: int, size=(64, 80), seed=1) -> onnx.ModelProto:
    """A logits-form model whose logits vary from pixel to pixel (a random 4x4 stride-4 convolution), so that
    segments where a third class wins between two others (the refine form's rare paths) are common."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((num_classes, 3, 4, 4)).astype(np.float32)
    conv = helper.make_node("Conv", ["pixel_values", "weight"], ["output"], strides=[4, 4])
    graph = helper.make_graph([conv], "noisy",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, *size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             [1, num_classes, size[0] // 4, size[1] // 4])],
                              [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    ModelMetadata(classes=[f"class {i}" for i in range(num_classes)], input_size=size).to_onnx(model)
    return model


@pytest.mark.parametrize("size", [(720, 1280), (500, 701)])
def test_refine_equals_dense_on_noisy_logits(size, frames):
    """Column and row segments with three classes crossing (rare paths) and non-integer scales: refine computes
    the same argmax(bilinear(logits)) as dense, pixel for pixel but for float near-ties."""
    logits = _noisy(11)
    refine, dense = (_session(fg.to_frame_form(logits, post=p)) for p in fg.POSTS)
    for frame in _at(frames, size):
        a = refine.run(None, {"frame": frame[None]})[0]
        b = dense.run(None, {"frame": frame[None]})[0]
        assert a.shape == b.shape == (1, *size)
        assert (a == b).mean() >= 0.9999
    assert _agreement(fg.to_frame_form(logits), logits, _at(frames, size)) >= MIN_AGREEMENT


def test_preprocessing_is_cv2_bit_exact(tiny, frames):
    """The in-graph resize reproduces cv2.resize(INTER_LINEAR) on uint8 exactly (network input equal)."""
    for post in fg.POSTS:
        framed = fg.to_frame_form(tiny, post=post)
        framed.graph.output.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, None))
        session = _session(framed)
        noise = [np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
                 for size in ((1, 1), (37, 1999), (2001, 7))]  # rounding everywhere, edges, upscaling
        for frame in frames + _at(frames[:1], (1080, 1920)) + _at(frames[:1], (100, 150)) + noise:
            got = session.run(None, {"frame": frame[None]})[1]
            want = frames_to_input([frame], (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("net, size", [((37, 53), (301, 457)), ((37, 53), (37, 1999)), ((384, 512), (720, 1280)),
                                       ((384, 512), (1080, 1920))])
def test_dense_pre_exact_at_a_fixed_frame_size_and_within_a_level_at_any(net, size):
    """TensorRT's dense form computes its source coordinates in float32 when the frame size is dynamic (TensorRT
    has no double): bit for bit with a fixed frame size; with a dynamic one, one grey level off on a few values at
    some pairs of sizes, and exact from 720p and 1080p to 384x512 (as the module's docstring states)."""
    logits = _synthetic(11, size=net)
    meta = ModelMetadata.from_onnx(logits)
    frame = np.random.default_rng(size[1]).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    want = frames_to_input([frame[0]], net, meta.mean, meta.std)

    def network_input(framed):
        framed.graph.output.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, None))
        return _session(framed).run(None, {"frame": frame})[1]

    np.testing.assert_array_equal(network_input(fg.to_frame_form(logits, post="dense", frame_size=size)), want)
    off = np.abs(network_input(fg.to_frame_form(logits, post="dense")) - want)
    level = 1 / (255 * min(meta.std)) * 1.0001
    if net == (384, 512):
        assert off.max() == 0
    else:
        assert 0 < off.max() <= level and (off > 0).mean() < 0.01


def test_resize_pre_form(tiny, frames):
    """pre="resize": ONNX Resize of the float frame, channels last, instead of the bit-exact integer emulation;
    recorded in the metadata; its network input stays within a grey level of cv2's (never bit-exact: cv2 rounds
    in 11-bit fixed point)."""
    exact, fast = fg.to_frame_form(tiny), fg.to_frame_form(tiny, pre="resize")
    assert _raw(exact)["extra"]["pre"] == "exact" and _raw(fast)["extra"]["pre"] == "resize"
    resizes = [n for n in fast.graph.node if n.op_type == "Resize" and n.name.startswith(fg.PREFIX)]
    assert len(resizes) == 1 and not any(n.op_type == "Resize" and n.name.startswith(fg.PREFIX)
                                         for n in exact.graph.node)
    assert not any("src_row" in n.output[0] for n in fast.graph.node)
    fast.graph.output.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, None))
    session = _session(fast)
    level = 1 / (255 * 0.225)  # one grey level in the normalised input (the largest std)
    off = []
    for frame in _at(frames[:2], (720, 1280)) + _at(frames[:1], (1080, 1920)):
        got = session.run(None, {"frame": frame[None]})[1]
        want = frames_to_input([frame], (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert np.abs(got - want).max() <= level
        off.append(float((np.abs(got - want) > 1e-5).mean()))
    assert max(off) > 0.01  # not the exact form under another name
    with pytest.raises(ExportError, match="pre-processing"):
        fg.to_frame_form(tiny, pre="nearest")


def test_resize_pre_form_on_the_bundled_model(frames):
    """The bundled model through pre="resize" on real CamVid frames at 720p: close to the reference, below the
    exact form (which agrees on every pixel but float near-ties)."""
    logits = bundled_logits("camvid-b0")
    camvid = _at(frames[:2], (720, 1280))
    fast = fg.frame_agreement(fg.to_frame_form(logits, pre="resize"), logits, camvid)
    exact = fg.frame_agreement(fg.to_frame_form(logits), logits, camvid)
    assert min(exact) >= 0.99999
    assert MIN_AGREEMENT <= min(fast) and max(fast) < 1.0


def test_uniform_frame_has_no_mixed_segments(tiny):
    """A black frame gives (almost surely) one label everywhere: the refine form's empty NonZero path."""
    black = np.zeros((300, 400, 3), np.uint8)
    assert _agreement(fg.to_frame_form(tiny), tiny, [black]) == 1.0


def test_fixed_frame_size_equals_dynamic(tiny, frames):
    batch = _at(frames, (480, 640))
    fixed = fg.to_frame_form(tiny, frame_size=(480, 640))
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 480, 640, 3]
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [1, 480, 640]
    assert _raw(fixed)["frame_size"] == [480, 640]
    dynamic, fixed_session = _session(fg.to_frame_form(tiny)), _session(fixed)
    for frame in batch:
        want = dynamic.run(None, {"frame": frame[None]})[0]
        assert (fixed_session.run(None, {"frame": frame[None]})[0] == want).all()
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):  # a frame of another size
        fixed_session.run(None, {"frame": _at(frames[:1], (720, 1280))[0][None]})


def test_output_stride(tiny, frames):
    for stride in (2, 3):
        framed = fg.to_frame_form(tiny, output_stride=stride)
        out = _session(framed).run(None, {"frame": _at(frames[:1], (481, 641))[0][None]})[0]
        assert out.shape == (1, -(-481 // stride), -(-641 // stride))
        assert _agreement(framed, tiny, _at(frames, (481, 641))) >= MIN_AGREEMENT
        assert _raw(framed)["output_stride"] == stride


def test_frame_smaller_than_logits(tiny, frames):
    """Masks smaller than the logits (downsampling, one pixel per segment at most)."""
    assert _agreement(fg.to_frame_form(tiny), tiny, _at(frames, (50, 61))) >= MIN_AGREEMENT


# ---------------------------------------------------------------------------------------- methods' exports


@pytest.fixture(scope="module")
def plain_frame_export(tiny_segformer, tmp_path_factory):
    from segrt.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("frame") / "plain.onnx"
    meta = ModelMetadata(classes=tiny_segformer.CAMVID_CLASSES)
    return export_onnx(tiny_segformer.tiny_segformer(), meta, path, size=(256, 320), form="frame"), path


def test_export_onnx_frame_form(plain_frame_export, frames):
    result, path = plain_frame_export
    assert result.form == "frame" and result.frame_agreement >= MIN_AGREEMENT
    model = onnx.load(str(path))
    raw = _raw(model)
    assert raw["form"] == "frame" and raw["output"] == "mask" and raw["input_size"] == [256, 320]
    assert raw["frame_size"] is None and raw["output_stride"] == 1 and raw["extra"]["post"] == "refine"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert model.ir_version == 8 and model.opset_import[0].version == 17
    assert _agreement(model, fg.network_of(model), _at(frames, (1080, 1920))) >= MIN_AGREEMENT


def test_export_onnx_refuses_labels_in_frame_form(tiny_segformer, tmp_path):
    from segrt.export.onnx_export import export_onnx

    meta = ModelMetadata(classes=tiny_segformer.CAMVID_CLASSES)
    with pytest.raises(ExportError, match="logits form only"):
        export_onnx(tiny_segformer.tiny_segformer(), meta, tmp_path / "x.onnx", size=(256, 320), output="labels",
                    form="frame")
    with pytest.raises(ExportError, match="unknown form"):
        export_onnx(tiny_segformer.tiny_segformer(), meta, tmp_path / "x.onnx", size=(256, 320), form="mask")


@pytest.fixture(scope="module")
def merged_logits(tiny_segformer, tmp_path_factory) -> onnx.ModelProto:
    """A logits-form export with Segformer++ HQ token merging (segrt.TokenMerge model-local functions)."""
    from segrt.export.methods.merging.model import MATCHING_TOLERANCE, apply_merging
    from segrt.export.onnx_export import export_onnx

    meta = ModelMetadata(classes=tiny_segformer.CAMVID_CLASSES)
    path = tmp_path_factory.mktemp("frame") / "hq.onnx"
    export_onnx(apply_merging(tiny_segformer.tiny_segformer(), "hq"), meta, path, size=(256, 320),
                tolerance=MATCHING_TOLERANCE)
    return onnx.load(str(path))


def test_merged_export_keeps_local_functions(merged_logits, frames):
    logits = merged_logits
    assert logits.functions
    framed = fg.to_frame_form(logits)
    assert [f.name for f in framed.functions] == [f.name for f in logits.functions]
    assert _agreement(framed, logits, _at(frames, (720, 1280))) >= MIN_AGREEMENT
    back = fg.network_of(framed)
    assert [f.name for f in back.functions] == [f.name for f in logits.functions]


def test_int8_export(tiny_onnx, camvid_root, tmp_path, frames):
    from segrt.engines.model_info import describe
    from segrt.export.passes.quantize import quantize_int8

    out = tmp_path / "int8.onnx"
    quantize_int8(tiny_onnx, out, camvid_root / "train", 4, show_progress=False)
    logits = onnx.load(str(out))
    framed = fg.to_frame_form(logits)
    qdq = [n for n in framed.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and not n.name.startswith(fg.PREFIX)]
    # the network's Q/DQ kept; the wrapper's own DequantizeLinear nodes (exact resize, normalisation) do not make
    # engines/model_info.py read the FP32 frame form as quantized, nor hide the INT8 one's Q/DQ
    assert len(qdq) == len([n for n in logits.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]) > 0
    assert describe(framed, tmp_path / "framed.onnx").quantized
    fp32 = fg.to_frame_form(onnx.load(str(tiny_onnx)))
    assert any(n.op_type == "DequantizeLinear" for n in fp32.graph.node)
    assert not describe(fp32, tmp_path / "fp32.onnx").quantized
    assert _agreement(framed, logits, _at(frames, (720, 1280))) >= MIN_AGREEMENT


@pytest.mark.parametrize("method", ["early exit", "gated"])
def test_early_exit_and_gated_exports(method, tiny_segformer, tmp_path, frames):
    """export_onnx(form="frame") of a DToP early-exit model and of a DynaSegFormer gated one (TopK gates)."""
    import torch

    from segrt.export.methods.early_exit.model import ExitConfig, attach_exit, make_heads
    from segrt.export.methods.gating.model import GatingConfig, attach_gates, set_mode
    from segrt.export.onnx_export import export_onnx

    model = tiny_segformer.tiny_segformer()
    if method == "early exit":
        torch.manual_seed(3)
        model = attach_exit(model, make_heads(model, ["s2b0"]), ExitConfig(threshold=0.5))
    else:
        model = attach_gates(model, GatingConfig(keep_ratio=0.5))
        set_mode(model, "topk", keep_ratio=0.5)
    path = tmp_path / "m.onnx"
    meta = ModelMetadata(classes=tiny_segformer.CAMVID_CLASSES)
    result = export_onnx(model, meta, path, size=(256, 320), form="frame", post="dense")
    assert result.frame_agreement >= MIN_AGREEMENT
    framed = onnx.load(str(path))
    assert _agreement(framed, fg.network_of(framed), _at(frames, (1080, 1920))) >= MIN_AGREEMENT


def test_fp16_export(tiny_onnx, tmp_path, frames):
    """FP16 (mixed precision for TensorRT): converted as a logits graph, then wrapped; the wrapper stays FP32."""
    from segrt.export.passes.fp16 import export_fp16

    out = tmp_path / "fp16.onnx"
    export_fp16(tiny_onnx, out)
    logits = onnx.load(str(out))
    framed = fg.to_frame_form(logits)
    assert framed.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert _agreement(framed, logits, _at(frames, (720, 1280))) >= MIN_AGREEMENT


def test_dynamic_network_runs_at_frame_size_and_batches(tiny_segformer, tmp_path, frames):
    """A dynamic export: no resize inside (the network runs at the frame's size), dynamic batch."""
    from segrt.export.onnx_export import export_onnx

    meta = ModelMetadata(classes=tiny_segformer.CAMVID_CLASSES)
    path = tmp_path / "dynamic.onnx"
    result = export_onnx(tiny_segformer.tiny_segformer(), meta, path, size=(256, 320), dynamic=True, form="frame")
    assert result.frame_agreement >= MIN_AGREEMENT
    model = onnx.load(str(path))
    assert _raw(model)["input_size"] is None
    assert not any(n.op_type == "Gather" and "src_row" in n.output[0] for n in model.graph.node)  # no resize
    logits = fg.network_of(model)
    pair = _at(frames[:2], (240, 320))
    masks = _session(model).run(None, {"frame": np.stack(pair)})[0]
    assert masks.shape == (2, 240, 320)
    net = _session(logits)
    for mask, frame in zip(masks, pair):
        x = frames_to_input([frame], None, meta.mean, meta.std)
        want = logits_to_mask(net.run(None, {"pixel_values": x})[0][0], (240, 320))
        assert (mask == want).mean() >= MIN_AGREEMENT


# ---------------------------------------------------------------------------------------- many classes


def _synthetic(num_classes: int, size=(64, 80), seed=0, opset=17) -> onnx.ModelProto:
    """A logits-form model of ``num_classes`` classes: 4x4 average pooling and a random 1x1 convolution."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((num_classes, 3, 1, 1)).astype(np.float32) * 3
    nodes = [helper.make_node("AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Conv", ["pooled", "weight"], ["output"])]
    graph = helper.make_graph(nodes, "synthetic",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, *size])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             [1, num_classes, size[0] // 4, size[1] // 4])],
                              [numpy_helper.from_array(weight, "weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    ModelMetadata(classes=[f"class {i}" for i in range(num_classes)], input_size=size).to_onnx(model)
    return model


@pytest.mark.parametrize("post, mask_int32, dtype", [("refine", False, np.uint16), ("dense", False, np.uint16),
                                                      ("dense", True, np.int32)])
def test_more_than_256_classes(post, mask_int32, dtype, frames):
    logits = _synthetic(300)
    framed = fg.to_frame_form(logits, post=post, mask_int32=mask_int32)
    mask = _session(framed).run(None, {"frame": _at(frames[:1], (120, 160))[0][None]})[0]
    assert mask.dtype == dtype and mask.max() > 255  # labels past 255 are kept, never wrapped
    assert _agreement(framed, logits, _at(frames, (120, 160))) >= MIN_AGREEMENT


@pytest.mark.parametrize("post", fg.POSTS)
def test_newest_opset(post, frames):
    """segrt exports opsets 17..21; ops whose signature changed (ReduceMax axes from 18) follow the model's."""
    logits = _synthetic(11, opset=21)
    framed = fg.to_frame_form(logits, post=post)
    assert framed.opset_import[0].version == 21 and framed.ir_version == 10
    assert _agreement(framed, logits, _at(frames, (480, 640))) >= MIN_AGREEMENT


# ---------------------------------------------------------------------------------------- round trip, refusals


def test_network_of_round_trip(tiny, frames):
    framed = fg.to_frame_form(tiny)
    back = fg.network_of(framed)
    assert len(back.graph.node) == len(tiny.graph.node)
    assert {i.name for i in back.graph.initializer} == {i.name for i in tiny.graph.initializer}
    assert back.graph.input[0] == tiny.graph.input[0] and back.graph.output[0] == tiny.graph.output[0]
    assert ModelMetadata.from_onnx(back) == ModelMetadata.from_onnx(tiny)
    onnx.checker.check_model(back, full_check=True)
    x = frames_to_input(frames[:1], (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    a, b = (_session(m).run(None, {"pixel_values": x})[0] for m in (tiny, back))
    np.testing.assert_array_equal(a, b)
    assert fg.to_frame_form(back).graph == framed.graph  # wrapping again gives the same graph


def test_refusals(tiny):
    with pytest.raises(ExportError, match="already frame form"):
        fg.to_frame_form(fg.to_frame_form(tiny))
    no_meta = onnx.load_from_string(tiny.SerializeToString())
    del no_meta.metadata_props[:]
    with pytest.raises(ExportError, match="no segrt metadata"):
        fg.to_frame_form(no_meta)
    labels = onnx.load_from_string(tiny.SerializeToString())
    meta = ModelMetadata.from_onnx(labels)
    meta.output = "labels"
    meta.to_onnx(labels)
    with pytest.raises(ExportError, match="only a logits-form model"):
        fg.to_frame_form(labels)
    with pytest.raises(ExportError, match="post-processing"):
        fg.to_frame_form(tiny, post="sparse")
    for stride in (0, 65, 1.5, True):
        with pytest.raises(ExportError, match="output_stride"):
            fg.to_frame_form(tiny, output_stride=stride)
    for size in ((0, 640), (480,), ("480", 640), (480.0, 640)):
        with pytest.raises(ExportError, match="frame_size"):
            fg.to_frame_form(tiny, frame_size=size)
    with pytest.raises(ExportError, match="not a segrt frame-form"):
        fg.network_of(tiny)
    with pytest.raises(ExportError, match="opset 12; the frame form needs opset >= 13"):
        fg.to_frame_form(_synthetic(11, opset=12))


def test_verification_failure_is_typed(tiny, frames):
    with pytest.raises(ExportVerificationError, match="agrees with the reference"):
        fg.wrap_verified(tiny, frames[:1], min_agreement=1.01)  # an impossible bar: the check does compare


# ---------------------------------------------------------------------------------------- TensorRT


def test_dense_form_passes_tensorrt_check(merged_logits):
    """Dense frame form of the bundled model and of a merged export: no TensorRT parser errors (UINT8 only at
    the I/O, next to a Cast; ArgMax; Resize linear half_pixel). The refine form is for ONNX Runtime: it keeps
    uint8 tensors inside, which TensorRT refuses."""
    from segrt.engines.bundle import logits_network
    from segrt.engines.compat import check_model
    from segrt.engines.targets import get_target

    target = get_target("jetson-orin")
    # what `segrt build` wraps: the network with its ops in their portable forms (the exports are in the CPU form)
    bundled, merged = logits_network(bundled_logits("camvid-b0")), logits_network(merged_logits)
    for logits in (bundled, merged):
        for frame_size in (None, (720, 1280)):
            dense = fg.to_frame_form(logits, post="dense", frame_size=frame_size, mask_int32=True)
            report = check_model(dense, target, "10.3", "fp16")
            assert report.ok, report.to_text()
    dense = fg.to_frame_form(bundled, post="dense", pre="resize", mask_int32=True)  # a Cast, then a float Resize
    assert check_model(dense, target, "10.3", "fp16").ok
    refine = check_model(fg.to_frame_form(bundled), target, "10.3", "fp16")
    assert refine.find("uint8-tensor")


# ---------------------------------------------------------------------------------------- committed fixture, CLI


def test_committed_frame_fixture(tiny_frame_onnx, tiny, frames):
    """tests/fixtures/segformer-tiny-frame.onnx: the same network as segformer-tiny.onnx with a dynamic batch,
    wrapped; batches frames of one size and matches the reference path."""
    framed = onnx.load(str(tiny_frame_onnx))
    network = fg.network_of(framed)
    assert network.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    x = frames_to_input(frames[:1], (256, 320), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    np.testing.assert_allclose(_session(network).run(None, {"pixel_values": x})[0],
                               _session(tiny).run(None, {"pixel_values": x})[0], rtol=0, atol=1e-5)  # same weights
    pair = _at(frames[:2], (720, 1280))
    masks = _session(framed).run(None, {"frame": np.stack(pair)})[0]
    singles = [_session(framed).run(None, {"frame": f[None]})[0][0] for f in pair]
    assert masks.shape == (2, 720, 1280) and all((m == s).all() for m, s in zip(masks, singles))
    assert _agreement(framed, tiny, pair) >= MIN_AGREEMENT


def _cli(capsys, *args) -> tuple[int, str]:
    from segrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out + err


def test_cli_exports_frame_form_by_default(capsys, tmp_path, camvid_frame):
    from segrt.export.passes.cpu_form import is_cpu_form
    from segrt.runtime.engine import Engine

    path = tmp_path / "m.onnx"
    code, out = _cli(capsys, "export", "random:b0:11", "--size", "64x96", "--output-stride", "2", "-o", path)
    assert code in (0, None), out
    assert "mask agreement" in out
    raw = _raw(onnx.load(str(path)))
    assert raw["form"] == "frame" and raw["output_stride"] == 2 and raw["extra"]["post"] == "refine"
    with Engine(path) as engine:
        assert engine.infer(camvid_frame).shape == (-(-camvid_frame.shape[0] // 2), -(-camvid_frame.shape[1] // 2))
    assert is_cpu_form(onnx.load(str(path))) and raw["extra"]["ops"] == "onnxruntime-cpu"  # the CLI default
    portable = tmp_path / "portable.onnx"
    code, out = _cli(capsys, "export", "random:b0:11", "--size", "64x96", "--ops", "portable", "-o", portable)
    assert code in (0, None), out
    assert not is_cpu_form(onnx.load(str(portable))) and "ops" not in _raw(onnx.load(str(portable)))["extra"]


@pytest.mark.parametrize("args, needle", [
    (["--labels"], "--labels is for --form logits"),
    (["--form", "logits", "--post", "dense"], "apply to --form frame only"),
    (["--form", "tensor"], "--form"),
    (["--post", "sparse"], "--post"),
    (["--output-stride", "0"], "--output-stride"),
    (["--frame-size", "12xx"], "--frame-size"),
    (["--ops", "gpu"], "--ops"),
])
def test_cli_refuses_contradictory_form_options(capsys, tmp_path, args, needle):
    code, out = _cli(capsys, "export", "random:b0:11", "-o", tmp_path / "m.onnx", *args)
    assert code == 2 and needle in out and "Traceback" not in out, out
    assert not (tmp_path / "m.onnx").exists()
