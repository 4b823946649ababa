"""INT8 for ONNX Runtime's CPU provider (issue 20): the quantization form its CPU kernels run fastest.

The explicit Q/DQ file of :func:`segrt.export.passes.quantize.quantize_int8` is what TensorRT needs, but ONNX
Runtime's CPU provider runs it slower than FP32 (on the bundled camvid-b0 at 512x512): each quantized MatMul
becomes a QLinearMatMul whose bias Add is no longer fused, every quantized tensor gains a QuantizeLinear and a
DequantizeLinear pass, GELU falls apart into Div/Erf/Add/Mul, and every QLinearConv (NHWC) gets transposes
around it. ``benchmarks/int8_forms.py`` timed the alternatives (QOperator, per-tensor, ORT's pre-processing,
static Q/DQ of MatMuls or Convs alone, uint8 activations, float MatMul outputs, dynamic quantization, per
convolution kind); the fastest that keeps the labels is this "cpu" form (1 thread, 512x512: about 1.15x the
FP32 graph's time, 99.8% label agreement, CamVid val mIoU unchanged):

- weight MatMuls (the projections and MLP layers): dynamic quantization (:func:`onnxruntime.quantization.
  quantize_dynamic`): DynamicQuantizeLinear + MatMulInteger + scale Mul, all standard ONNX operators, which
  ONNX Runtime fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat with the bias Add folded in; their
  outputs stay float, so GELU, the residual Adds and SkipLayerNormalization fuse as in FP32. Weights int8 per
  output column, activations uint8 with a per-tensor range taken from each tensor at run time (no
  calibration, and better label agreement than static scales);
- sequence-reduction convolutions (kernel == stride): static symmetric int8 Q/DQ, as in the TensorRT file;
  ONNX Runtime runs them as QLinearConv (AMX/VNNI), a little faster than the float NCHWc Conv;
- everything else float: depthwise and 1x1 convolutions (quantized, they cost more in transposes and Q/DQ
  passes than their kernels save), the patch embeddings (no measurable gain, and the stage-1 one on the
  image cost 0.3 points of label agreement), the attention MatMuls, LayerNorm, Softmax and the classifier.

What stays is float and mostly memory-bound: stage 1 (16384 tokens of 32 channels) keeps its int8 MatMuls
near the FP32 time, and its attention, Softmax, the transposes, GELU and the decoder's upsampling take most
of the INT8 model's time, which caps the gain of any INT8 form on this graph.

The file holds only standard ONNX operators (no com.microsoft contrib ops); TensorRT does not parse
MatMulInteger / DynamicQuantizeLinear, so ``segrt build`` needs the Q/DQ file (``--int8-form qdq``), and
:mod:`segrt.engines.compat` refuses this one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from segrt.export.passes.quantize import (
    QuantizeResult,
    _restore_metadata,
    attention_matmuls,
    census,
    load_network,
    output_heads,
    quantize_int8,
    quiet_quantization_log,
    require_metadata,
    scratch_folder,
)
from segrt.runtime import sinks
from segrt.runtime.errors import ConfigError, ExportError

CONV_KINDS = ("patch", "reduction", "depthwise", "pointwise", "other")
CPU_CONV_KINDS = ("reduction",)  # the convolutions the CPU form quantizes (static Q/DQ)
INT8_FORMS = ("cpu", "qdq")


def conv_kinds(proto: onnx.ModelProto) -> dict[str, str]:
    """Conv node name -> kind: ``depthwise`` (group > 1, the Mix-FFN 3x3), ``reduction`` (kernel == stride > 1,
    the attention's sequence reduction), ``patch`` (other strided convs: the overlapping patch embeddings),
    ``pointwise`` (1x1, stride 1: the decoder projections and the classifier), ``other``."""
    shapes = {i.name: list(i.dims) for i in proto.graph.initializer}
    kinds = {}
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = shapes.get(node.input[1])
        kernel = attrs.get("kernel_shape") or (weight[2:] if weight else [])
        strides = attrs.get("strides") or [1] * len(kernel)
        if attrs.get("group", 1) > 1:
            kinds[node.name] = "depthwise"
        elif kernel and list(kernel) == list(strides) and max(kernel) > 1:
            kinds[node.name] = "reduction"
        elif max(strides, default=1) > 1:
            kinds[node.name] = "patch"
        elif kernel and max(kernel) == 1:
            kinds[node.name] = "pointwise"
        else:
            kinds[node.name] = "other"
    return kinds


def quantize_int8_cpu(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calib_dir: str | Path,
    count: int = 64,
    *,
    size: tuple[int, int] | None = None,
    method: str = "minmax",
    convs: Sequence[str] = CPU_CONV_KINDS,
    per_channel: bool = True,
    show_progress: bool = True,
) -> QuantizeResult:
    """``onnx_in`` (FP32, segrt metadata) -> the CPU INT8 form at ``onnx_out`` (see the module docstring).

    ``convs`` picks the convolution kinds (:data:`CONV_KINDS`) quantized with static Q/DQ, calibrated like
    :func:`quantize_int8` on ``count`` images of ``calib_dir``; an empty ``convs`` skips calibration (weight
    MatMuls only, all dynamic). The metadata is carried over with ``extra["precision"] = "int8"`` and
    ``extra["int8_form"] = "cpu"``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    unknown = sorted(set(convs) - set(CONV_KINDS))
    if unknown:
        raise ConfigError(f"unknown convolution kind(s) {', '.join(unknown)}; expected some of {', '.join(CONV_KINDS)}")
    proto, meta = load_network(onnx_in)
    kinds = conv_kinds(proto)
    float_convs = [name for name, kind in kinds.items() if kind not in convs]
    float_matmuls = attention_matmuls(proto) + output_heads(proto)
    scratch = scratch_folder(onnx_out, ".quantize-cpu.")
    calibration, images = None, 0
    with scratch as tmp:
        source: onnx.ModelProto | Path
        if len(float_convs) < len(kinds):
            source = Path(tmp) / "convs.onnx"
            convs_only = quantize_int8(onnx_in, source, calib_dir, count, size=size, method=method,
                                       per_channel=per_channel, show_progress=show_progress, op_types=("Conv",),
                                       exclude=float_convs, keep_cpu_ops=True)
            images = convs_only.calibration_images
            calibration = require_metadata(onnx.load(str(source)), source).extra["calibration"]
        else:
            # the loaded model, not its path: given a path, ONNX Runtime writes a "-inferred.onnx" next to it;
            # a copy, as ONNX Runtime may rewrite the graph it is given
            source = onnx.ModelProto()
            source.CopyFrom(proto)
        raw = Path(tmp) / "dynamic.onnx"
        try:
            with quiet_quantization_log():
                quantize_dynamic(
                    source,
                    raw,
                    op_types_to_quantize=["MatMul"],
                    per_channel=per_channel,
                    reduce_range=False,  # AMX / AVX-512 VNNI: no 16-bit accumulation overflow to avoid
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=float_matmuls,
                    extra_options={"MatMulConstBOnly": True},  # activation x activation MatMuls stay float anyway
                )
        except Exception as exc:
            raise ExportError(f"dynamic INT8 quantization of {onnx_in} failed: {type(exc).__name__}: {exc}") from exc
        try:
            quantized = onnx.load(str(raw))
        except Exception as exc:
            raise ExportError(f"dynamic INT8 quantization of {onnx_in} wrote no readable model: {exc}") from exc
    what = "weight MatMuls dynamic (uint8 x int8)"
    if calibration:
        what += f"; {', '.join(k for k in CONV_KINDS if k in convs)} convs static Q/DQ ({calibration})"
    meta.extra = {**meta.extra, "precision": "int8", "int8_form": "cpu", "calibration": what}
    _restore_metadata(quantized, proto, meta)
    quantized.doc_string = proto.doc_string + " (int8, ONNX Runtime CPU form)"
    try:
        onnx.checker.check_model(quantized)
    except Exception as exc:
        raise ExportError(f"quantized graph fails onnx.checker: {exc}") from exc
    sinks.write_bytes(onnx_out, quantized.SerializeToString(), "INT8 model")
    q, f = census(quantized)
    return QuantizeResult(onnx_out, images, q, f)


def quantize_int8_form(
    onnx_in: str | Path, onnx_out: str | Path, calib_dir: str | Path, count: int = 64, *, form: str = "cpu", **kwargs
) -> QuantizeResult:
    """One entry point for both INT8 files: ``form="cpu"`` (:func:`quantize_int8_cpu`, fastest on ONNX Runtime's
    CPU provider) or ``form="qdq"`` (:func:`quantize_int8`, the symmetric explicit Q/DQ file TensorRT builds)."""
    if form not in INT8_FORMS:
        raise ConfigError(f"unknown INT8 form {form!r}; expected one of {', '.join(INT8_FORMS)}")
    cpu_options = {"size", "method", "convs", "per_channel", "show_progress"}
    if form == "cpu" and set(kwargs) - cpu_options:
        raise ConfigError(f"the cpu INT8 form takes {', '.join(sorted(cpu_options))}; not "
                          f"{', '.join(sorted(set(kwargs) - cpu_options))} (options of the qdq form)")
    if form == "qdq":
        return quantize_int8(onnx_in, onnx_out, calib_dir, count, **kwargs)
    return quantize_int8_cpu(onnx_in, onnx_out, calib_dir, count, **kwargs)
