"""The ops of a segrt graph in the forms ONNX Runtime's CPU provider runs fastest, or in portable forms.

Each rewrite computes the same function (verified like any export rewrite) and has an exact way back:
- narrow LayerNorms as InstanceNormalization (:mod:`.norm_cpu`);
- token merging's sums as one MatMul with a one-hot assignment instead of ScatterElements, where the merges
  are small enough (:mod:`.merge_functions`).

``segrt export`` writes the CPU form by default (ONNX Runtime on the CPU is segrt's embedded backend) and
records ``extra["ops"] = "onnxruntime-cpu"``; ``segrt build``, the Q/DQ quantizer and the FP16 pass, whose
files are for TensorRT (which fuses LayerNorm and keeps it in FP32), call :func:`to_portable_ops` first.
"""

from __future__ import annotations

import onnx

from segrt.export.passes.merge_functions import merge_sums_form, with_merge_sums
from segrt.export.passes.norm_cpu import has_instance_norms, to_instance_norm, to_layer_norm
from segrt.runtime.metadata import ModelMetadata

OPS = ("cpu", "portable")
CPU_TAG = "onnxruntime-cpu"  # extra["ops"] of a file in the CPU form


def to_cpu_ops(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` (a copy) with its ops in the CPU forms, and what was rewritten (empty: nothing applied)."""
    proto, norms = to_instance_norm(proto)
    proto, merges = with_merge_sums(proto, "dense")
    changes = ([f"{norms} LayerNorms as InstanceNormalization"] if norms else []) + \
        (["token-merge sums as one-hot MatMuls"] if merges else [])
    if changes:
        _tag(proto, CPU_TAG)
    return proto, changes


def to_portable_ops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every CPU form turned back (exactly); ``proto`` itself when there is none."""
    if not is_cpu_form(proto):
        return proto
    proto, _ = to_layer_norm(proto)
    proto, _ = with_merge_sums(proto, "elements")
    _tag(proto, None)
    return proto


def is_cpu_form(proto: onnx.ModelProto) -> bool:
    return has_instance_norms(proto) or merge_sums_form(proto) in ("dense", "nd")


def _tag(proto: onnx.ModelProto, value: str | None) -> None:
    meta = ModelMetadata.from_onnx(proto)
    if meta is None:
        return
    meta.extra = {k: v for k, v in meta.extra.items() if k != "ops"}
    if value is not None:
        meta.extra["ops"] = value
    meta.to_onnx(proto)
