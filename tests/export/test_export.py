"""ONNX export: pinned versions, embedded metadata, numerical verification that catches broken graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from segrt.export.onnx_export import export_onnx
from segrt.export.passes.versions import ir_version_for
from segrt.runtime.errors import ExportError, ExportVerificationError
from segrt.runtime.metadata import METADATA_KEY, ModelMetadata


def test_ir_version_is_the_lowest_that_carries_the_opset():
    assert [ir_version_for(o) for o in (13, 17, 18, 19, 20, 21)] == [8, 8, 8, 9, 9, 10]


def test_export_pins_ir_and_opset_and_embeds_metadata(b0_onnx, random_b0):
    model = onnx.load(str(b0_onnx))
    assert model.ir_version == 8  # the lowest that carries opset 17: ONNX Runtime 1.17 reads IR <= 9
    # and no field that came with IR 10 (the exporter's notes on nodes and values)
    assert not any(n.metadata_props for n in model.graph.node)
    assert not any(v.metadata_props for v in (*model.graph.value_info, *model.graph.input, *model.graph.output))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops  # native op, not a decomposition
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_json(props[METADATA_KEY])
    assert meta.classes == random_b0.metadata.classes
    assert meta.input_size == (256, 320)
    assert meta.source_sha256 == random_b0.metadata.source_sha256
    assert meta.segrt_version
    assert '"num_classes": 11' in meta.architecture
    onnx.checker.check_model(model, full_check=True)


def test_exported_graph_matches_pytorch_on_real_frames(b0_onnx, random_b0, camvid_frame):
    import torch

    from segrt.runtime.preprocess import frames_to_input

    x = frames_to_input([camvid_frame], (256, 320), random_b0.metadata.mean, random_b0.metadata.std)
    sess = ort.InferenceSession(str(b0_onnx), providers=["CPUExecutionProvider"])
    actual = sess.run(None, {"pixel_values": x})[0]
    with torch.no_grad():
        expected = random_b0.model(torch.from_numpy(x)).numpy()
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 1e-4


def _perturb_first_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deliberately broken graph: the patch-embedding weights scaled by 1.5."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    return model


def test_verification_catches_a_broken_graph(tmp_path, random_b0, camvid_frame):
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportVerificationError, match="relative error"):
        export_onnx(random_b0.model, random_b0.metadata, out, size=(128, 160), transform=_perturb_first_conv,
                    verify_images=[camvid_frame])
    assert not out.exists()  # a failed export leaves nothing behind under the final name


def test_labels_output_and_dynamic_sizes(tmp_path, random_b0, camvid_frame):
    out = tmp_path / "dyn_labels.onnx"
    result = export_onnx(random_b0.model, random_b0.metadata, out, size=(128, 160), dynamic=True, output="labels",
                         verify_images=[camvid_frame])
    assert result.label_agreement > 0.999
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in [(96, 128), (160, 224)]:
        y = sess.run(None, {"pixel_values": np.zeros((2, 3, h, w), np.float32)})[0]
        assert y.dtype == np.uint8 and y.shape == (2, h // 4, w // 4)
    meta = ModelMetadata.from_json(onnx.load(str(out)).metadata_props[0].value)
    assert meta.input_size is None and meta.output == "labels"


def test_rejects_unsupported_opset(tmp_path, random_b0):
    with pytest.raises(ExportError, match="opset"):
        export_onnx(random_b0.model, random_b0.metadata, tmp_path / "x.onnx", opset=13)
