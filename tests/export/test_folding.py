"""Decoder folding is exact: folded PyTorch heads and the (folded by default) ONNX export reproduce the
unmodified model on real CamVid images."""

from __future__ import annotations

import copy

import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from segrt.export.methods.folding import FoldedHead, fold_decoder
from segrt.export.model.segformer import AllMLPHead, SegFormer, SegFormerConfig
from segrt.export.onnx_export import export_onnx, relative_error
from segrt.runtime.preprocess import frames_to_input

SIZE = (256, 320)


def camvid_frames(root, count=3):
    import cv2

    paths = sorted((root / "val").glob("*.png"))[:: 101 // count][:count]
    return [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]


def with_trained_batchnorm(model: SegFormer, seed: int = 1) -> SegFormer:
    """Freshly initialised BatchNorms are identities; give them statistics so that folding them is tested."""
    model = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
        bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def inputs(frames, metadata, size=SIZE) -> torch.Tensor:
    return torch.from_numpy(frames_to_input(frames, size, metadata.mean, metadata.std))


@pytest.mark.parametrize("head_style", ["hf", "mmseg"])
def test_folded_head_equals_unmodified_model_on_camvid(head_style, random_b0, camvid_root):
    torch.manual_seed(0)
    model = SegFormer(SegFormerConfig.from_variant("b0", 11, head_style=head_style)).eval()
    model = with_trained_batchnorm(model)
    folded = fold_decoder(model)
    assert isinstance(folded.decode_head, FoldedHead)
    assert isinstance(model.decode_head, AllMLPHead), "folding must not modify the model it was given"
    x = inputs(camvid_frames(camvid_root), random_b0.metadata)
    with torch.no_grad():
        expected, actual = model(x).numpy(), folded(x).numpy()
    assert relative_error(actual, expected) < 1e-5
    assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_folded_head_drops_the_fuse_convolution(random_b0):
    folded = fold_decoder(random_b0.model)
    d = random_b0.model.config.decoder_dim
    in_channels = [m.in_channels for m in folded.decode_head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(in_channels) <= d, f"a conv still reads {max(in_channels)} channels at stride 4"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.decode_head.modules())


def test_default_export_is_folded_and_matches_unmodified_model(b0_onnx, random_b0, camvid_root):
    proto = onnx.load(str(b0_onnx))
    d = random_b0.model.config.decoder_dim
    shapes = [tuple(numpy_helper.to_array(t).shape) for t in proto.graph.initializer]
    assert not any(len(s) == 4 and s[1] == 4 * d for s in shapes), "the 4d -> d fuse convolution is still exported"
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    sess = ort.InferenceSession(str(b0_onnx), providers=["CPUExecutionProvider"])
    for frame in camvid_frames(camvid_root):
        x = inputs([frame], random_b0.metadata)
        with torch.no_grad():
            expected = random_b0.model(x).numpy()
        actual = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert relative_error(actual, expected) < 1e-4


def test_folded_mmseg_export_matches_unmodified_model(tmp_path, random_b0, camvid_root):
    torch.manual_seed(0)
    model = with_trained_batchnorm(SegFormer(SegFormerConfig.from_variant("b0", 11, head_style="mmseg")))
    frames = camvid_frames(camvid_root, 2)
    result = export_onnx(model, random_b0.metadata, tmp_path / "mmseg.onnx", size=(160, 224), verify_images=frames)
    assert result.max_rel_error < 1e-4  # verified against the unfolded model passed in
    meta = onnx.load(str(result.path)).metadata_props
    assert '"decoder": "folded"' in next(p.value for p in meta if p.key == "segrt")

