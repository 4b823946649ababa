"""FP16 ONNX for strongly typed TensorRT, and `segrt verify`'s comparison, checked in ONNX Runtime on CamVid."""

from __future__ import annotations

import cv2
import onnx
import pytest
from typer.testing import CliRunner

from segrt.export.passes.cpu_form import is_cpu_form
from segrt.export.passes.fp16 import FP32_OPS, export_fp16
from segrt.runtime.errors import ExportVerificationError


@pytest.fixture(scope="module")
def camvid_frames(camvid_root):
    paths = sorted((camvid_root / "val").glob("*.png"))[::25][:4]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


@pytest.fixture(scope="module")
def fp16_onnx(b0_onnx, camvid_frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "b0.fp16.onnx"
    return export_fp16(b0_onnx, out, frames=camvid_frames)


def test_fp16_matches_fp32_on_camvid(fp16_onnx):
    # Reported numbers: FP16 rounding only, no overflow.
    print(f"FP16 vs FP32 on {fp16_onnx.images} CamVid images: max rel. error {fp16_onnx.max_rel_error:.2e}, "
          f"label agreement {fp16_onnx.label_agreement:.4%}")
    assert fp16_onnx.images == 4
    assert fp16_onnx.max_rel_error < 0.05 and fp16_onnx.label_agreement > 0.99


def test_fragile_ops_and_io_stay_fp32(fp16_onnx, b0_onnx):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_onnx.path)), strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                            *model.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    kept = [n for n in model.graph.node if n.op_type in FP32_OPS]
    assert kept, "the SegFormer has LayerNormalization and Softmax nodes"
    # FP16 is for TensorRT: the export's ONNX Runtime CPU LayerNorms are LayerNormalization again
    assert is_cpu_form(onnx.load(str(b0_onnx))) and not is_cpu_form(model)
    for node in kept:
        assert all(types[i] == onnx.TensorProto.FLOAT for i in node.input if i), node.name
        # the residual sum feeding a LayerNorm is computed in FP32 too
        producers = {o: n for n in model.graph.node for o in n.output}
        src = producers.get(node.input[0])
        if node.op_type == "LayerNormalization" and src is not None and src.op_type == "Add":
            assert all(types[i] == onnx.TensorProto.FLOAT for i in src.input if i), src.name
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16_onnx.path.stat().st_size < 0.6 * b0_onnx.stat().st_size
    meta = next(p.value for p in model.metadata_props if p.key == "segrt")
    assert '"precision": "fp16"' in meta


def test_fp16_verification_can_fail(b0_onnx, camvid_frames, tmp_path):
    with pytest.raises(ExportVerificationError, match="relative error"):
        export_fp16(b0_onnx, tmp_path / "strict.onnx", frames=camvid_frames[:1], tolerance=1e-7)
    assert not (tmp_path / "strict.onnx").exists()


def test_verify_compares_with_polygraphy(b0_onnx, fp16_onnx, camvid_frames, tmp_path):
    from segrt.engines.verify import verify

    report = verify(b0_onnx, fp16_onnx.path, camvid_frames[:1])
    assert report.passed and report.images == 1 and report.label_agreement > 0.99
    (out,) = report.outputs
    assert out.name == "output" and 0 < out.max_rel_l2 < 0.05 and out.max_abs > 0

    # A candidate with one corrupted weight must fail.
    model = onnx.load(str(fp16_onnx.path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    array = onnx.numpy_helper.to_array(weight).copy()
    array[...] = -array * 3
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    broken = tmp_path / "broken.fp16.onnx"
    onnx.save(model, str(broken))
    report = verify(b0_onnx, broken, camvid_frames[:1])
    assert not report.passed and report.outputs[0].max_rel_l2 > 0.05


def test_verify_command(b0_onnx, fp16_onnx, camvid_root, tmp_path):
    from segrt.cli import app

    result = CliRunner().invoke(app, ["verify", str(b0_onnx), "--engine", str(fp16_onnx.path), "--images",
                                      str(camvid_root / "val"), "--count", "1", "--json", str(tmp_path / "v.json")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.output and "label agreement" in result.output
    assert (tmp_path / "v.json").read_text().count('"passed": true') == 1


def test_fp16_of_a_merged_cpu_export_has_the_portable_merge_body(tmp_path, camvid_frames):
    """The FP16 file is for TensorRT: the merge body must be swapped before the functions are inlined."""
    from segrt.engines.compat import check_model
    from segrt.engines.targets import get_target
    from segrt.export.methods.merging.model import apply_merging
    from segrt.export.model.checkpoints import random_model
    from segrt.export.onnx_export import export_onnx
    from segrt.export.passes.merge_functions import merge_sums_form

    model = random_model("random:b0:11")
    source = tmp_path / "fast.onnx"
    export_onnx(apply_merging(model.model, "fast"), model.metadata, source, size=(256, 320), tolerance=1e-3)
    assert merge_sums_form(onnx.load(str(source))) == "dense"
    fp16 = export_fp16(source, tmp_path / "fast.fp16.onnx", frames=camvid_frames[:1])
    converted = onnx.load(str(fp16.path))
    merges = sum(n.op_type == "TokenMerge" for n in onnx.load(str(source)).graph.node)
    adds = [n for n in converted.graph.node if n.op_type == "ScatterElements"
            and any(a.name == "reduction" and a.s == b"add" for a in n.attribute)]
    assert merges and len(adds) == 2 * merges  # the portable body: sums and counts both scattered
    assert check_model(converted, get_target("desktop"), "10.3", "fp16").ok
