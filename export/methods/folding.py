"""Decoder folding: an exact rewrite of the all-MLP head that removes its most expensive layer.

The head projects every stage to ``d`` channels, upsamples bilinearly to stride 4, concatenates
(``4d`` channels) and fuses with a 1x1 convolution, then BatchNorm. The fuse convolution is a sum of
one ``d x d`` slice per stage, and per-pixel linear maps commute with bilinear interpolation (its
weights sum to one, so biases commute too). Each slice, and the BatchNorm scale, can therefore be
multiplied into its stage's projection and applied at the stage's native resolution, before
upsampling; all biases collapse into one. What remains at stride 4 is a sum, a ReLU and the
classifier, instead of a ``4d -> d`` convolution over every pixel.

- ``hf`` heads (Linear projections): projection, fuse slice and BatchNorm become one 1x1 conv.
- ``mmseg`` heads (conv1x1 + BN + ReLU per stage): the ReLU blocks folding into the projection, so
  the stage's BN is folded into its conv and the fuse slice becomes a second 1x1 conv after the ReLU,
  still at native resolution.

BatchNorm folding beyond this is not needed: the dynamo exporter's optimiser already folds
Conv+BatchNormalization, and ONNX Runtime fuses MatMul+Add into Gemm and the LayerNorm patterns.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.model.segformer import AllMLPHead, ConvBNReLU, LinearProjection
from segrt.runtime.errors import ExportError


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``y = scale * x + shift`` (float64, to keep the fold exact)."""
    var = bn.running_var.double()
    scale = bn.weight.double() / torch.sqrt(var + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out_ch, in_ch = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(out_ch, in_ch, 1, 1).float())
        if bias is not None:
            conv.bias.copy_(bias.float())
    return conv


class FoldedHead(nn.Module):
    """Inference-only equivalent of :class:`AllMLPHead`: one map per stage at native resolution,
    upsampled and summed, then ReLU and the classifier."""

    def __init__(self, stage_maps: list[nn.Module], classifier: nn.Conv2d):
        super().__init__()
        self.stage_maps = nn.ModuleList(stage_maps)
        self.classifier = classifier

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        x = self.stage_maps[0](features[0])  # carries the collapsed bias; already at stride 4
        for feat, stage_map in zip(features[1:], self.stage_maps[1:]):
            y = stage_map(feat)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = x + y
        return self.classifier(F.relu(x))

    @classmethod
    @torch.no_grad()
    def from_head(cls, head: AllMLPHead) -> FoldedHead:
        if head.training:
            raise ExportError("decoder folding is an inference rewrite: call model.eval() first")
        stages = len(head.linear_projections)
        d = head.linear_fuse.out_channels
        fuse = head.linear_fuse.weight.double().reshape(d, stages * d)
        scale, shift = _bn_scale_shift(head.batch_norm)
        bias = shift.clone()  # every additive term collapses here, applied once at stride 4
        folded: list[tuple[nn.Module | None, torch.Tensor]] = []  # (pre-map with its ReLU, linear map)
        for i, proj in enumerate(head.linear_projections):
            slot = stages - 1 - i if head.style == "hf" else i  # hf concatenates deepest stage first
            part = scale[:, None] * fuse[:, slot * d : (slot + 1) * d]  # BN scale times fuse slice, (d, d)
            if isinstance(proj, LinearProjection):
                bias += part @ proj.proj.bias.double()
                folded.append((None, part @ proj.proj.weight.double()))
            elif isinstance(proj, ConvBNReLU):
                # the ReLU stops the fold: BN goes into the stage's conv, the fuse slice after the ReLU
                conv, bn = proj[0], proj[1]
                s, t = _bn_scale_shift(bn)
                pre = nn.Sequential(_conv1x1(s[:, None] * conv.weight.double().flatten(1), t), nn.ReLU())
                folded.append((pre, part))
            else:
                raise ExportError(f"cannot fold decoder projection of type {type(proj).__name__}")
        maps: list[nn.Module] = []
        for i, (pre, weight) in enumerate(folded):
            linear = _conv1x1(weight, bias if i == 0 else None)  # stage 0 is never upsampled
            maps.append(linear if pre is None else nn.Sequential(*pre, linear))
        classifier = copy.deepcopy(head.classifier)
        return cls(maps, classifier)


def fold_decoder(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`AllMLPHead` replaced by its :class:`FoldedHead`.

    Works on wrapped models too (token-merging wrappers, export heads); the original is untouched.
    Raises :class:`ExportError` when there is no head to fold.
    """
    folded = copy.deepcopy(model).eval()
    found = False
    for name, module in list(folded.named_modules()):
        if isinstance(module, AllMLPHead):
            parent_name, _, attr = name.rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            setattr(parent, attr, FoldedHead.from_head(module))
            found = True
    if not found:
        raise ExportError(f"{type(model).__name__} has no all-MLP decode head to fold")
    return folded


def has_foldable_head(model: nn.Module) -> bool:
    return any(isinstance(m, AllMLPHead) for m in model.modules())
