"""INT8 post-training quantization of an exported SegFormer: static Q/DQ with ONNX Runtime's tools.

The graph keeps float inputs and outputs and gains QuantizeLinear/DequantizeLinear pairs around the
heavy operators (Conv, MatMul, Gemm), which is the explicit-quantization form both ONNX Runtime and
TensorRT read. Choices, and why:

- symmetric int8 for activations and weights, zero point 0: what TensorRT requires, so one file
  serves the CPU and the GPU;
- per-channel weights (axis of the output channels): SegFormer's projection weights differ by an
  order of magnitude between channels, per-tensor scales would waste most of the int8 range;
- LayerNormalization and Softmax stay in float (they are not in the quantized op types), as do the
  activation-by-activation attention MatMuls by default (softmax probabilities mostly lie below
  1/127 of their maximum and would round to zero) and the classifier that produces the logits;
- biases stay float: TensorRT's parser rejects int32 DequantizeLinear, and ONNX Runtime fuses Q/DQ
  Conv with a float bias all the same;
- one Q/DQ pair per consumer (:func:`dedicate_activation_pairs`): ONNX Runtime's CPU provider runs
  signed Q/DQ on its fast unsigned kernels (AMX / AVX-512 VNNI) only when a Q node has a single
  consumer; a shared pair leaves fan-out tensors (a LayerNorm output feeding q, k and v) on a float
  or a slow signed path.

Calibration runs the float model over real images with the model's own preprocessing
(:func:`segrt.runtime.preprocess.frames_to_input` and the metadata's size, mean and std).

This file is the TensorRT form. ONNX Runtime's CPU provider runs it slower than FP32 (unfused bias Adds and
GELU, a Q and a DQ pass per quantized tensor, transposes around each NHWC QLinearConv);
:mod:`segrt.export.passes.quantize_cpu` writes the form that CPU provider runs fastest.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx

from segrt.export.passes.cpu_form import is_cpu_form, to_portable_ops
from segrt.runtime import sinks
from segrt.runtime.datasets import IMAGE_SUFFIXES
from segrt.runtime.errors import ConfigError, DatasetError, ExportError, ModelLoadError
from segrt.runtime.image_header import check_image_file
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input
from segrt.runtime.progress import make_progress

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
FLOAT_OP_TYPES = ("LayerNormalization", "Softmax")  # never quantized, listed so the intent is checked
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class QuantizeResult:
    path: Path
    calibration_images: int
    quantized_nodes: dict[str, int]  # op type -> count of nodes fed by DequantizeLinear
    float_nodes: dict[str, int] = field(default_factory=dict)  # heavy op types left in float


def calibration_images(calib_dir: str | Path, count: int) -> list[Path]:
    """``count`` images spread evenly over a folder (a video's consecutive frames are near duplicates,
    so the first N would calibrate on one scene). A dataset root with a ``train/`` folder also works."""
    folder = Path(calib_dir)
    if not folder.is_dir():
        raise DatasetError(f"calibration folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images and (folder / "train").is_dir():
        images = sorted(p for p in (folder / "train").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {folder}")
    if count < 1:
        raise ConfigError(f"calibration count must be at least 1, got {count}")
    if count >= len(images):
        return images
    picks = np.linspace(0, len(images) - 1, count).round().astype(int)
    return [images[i] for i in picks]


def require_metadata(proto: onnx.ModelProto, path: Path) -> ModelMetadata:
    """The model's segrt metadata; quantization needs its normalisation, so a model without it is refused."""
    meta = ModelMetadata.from_onnx(proto)
    if meta is None:
        raise ModelLoadError(f"{path}: no segrt metadata; quantize models exported with `segrt export`")
    return meta


def load_network(path: Path) -> tuple[onnx.ModelProto, ModelMetadata]:
    """A logits-form segrt ONNX to quantize, with its metadata; typed errors for anything else (quantization
    keeps nodes in float by name, so every node needs one)."""
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read ONNX model ({exc})") from exc
    meta = require_metadata(proto, path)
    require_logits_form(proto, path)
    unnamed = [n for n in proto.graph.node if not n.name]
    if unnamed:
        raise ExportError(f"{path}: {len(unnamed)} nodes have no name; node exclusion needs names")
    return proto, meta


def scratch_folder(onnx_out: Path, prefix: str) -> tempfile.TemporaryDirectory:
    """A scratch folder beside ``onnx_out`` (same file system: the result is written from it), its parent
    created first; a failure is an OutputError naming the model file."""
    sinks.prepare_folder(onnx_out.parent, f"folder of {onnx_out.name}")
    with sinks.writing(onnx_out, "INT8 model (its scratch folder)"):
        return tempfile.TemporaryDirectory(dir=onnx_out.parent, prefix=prefix)


@contextmanager
def quiet_quantization_log():
    """ONNX Runtime's quantization tools warn about pre-processing on every call (on the root logger)."""
    root = logging.getLogger("root")
    saved = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(saved)


def require_logits_form(proto: onnx.ModelProto, path: Path) -> None:
    """Quantization calibrates and rewrites the network; a frame-form graph (uint8 frames in, masks out) has the
    network inside a wrapper whose integer resize and label table must not be touched."""
    from segrt.export.passes.frame_graph import is_frame_form

    if is_frame_form(proto):
        raise ConfigError(f"{path} is a frame-form model (frames in, masks out); quantize its logits form "
                          "(`segrt export --form logits`, or `segrt export --precision int8`, which quantizes the "
                          "network and then wraps it)")


read_metadata = require_metadata  # former name, still imported by tests/export/test_quantize.py


def _input_name_and_size(
    proto: onnx.ModelProto, meta: ModelMetadata, size: tuple[int, int] | None
) -> tuple[str, tuple[int, int]]:
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelLoadError(f"expected one image input, found {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    fixed = (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None
    chosen = fixed or size or meta.input_size
    if chosen is None:
        raise ConfigError("the model has a dynamic input size: pass the calibration size (HxW)")
    if fixed and size and tuple(size) != fixed:
        raise ConfigError(f"calibration size {size} differs from the model's fixed input size {fixed}")
    return inputs[0].name, (int(chosen[0]), int(chosen[1]))


def _calibration_reader(
    images: Sequence[Path], input_name: str, size: tuple[int, int], meta: ModelMetadata, progress=None
):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0
            self.task = progress.add_task("calibrating", total=len(images), info="") if progress else None

        def get_next(self):
            if self.index >= len(images):
                return None
            path = images[self.index]
            self.index += 1
            check_image_file(path)  # bounds from the header, before a decompression bomb is decoded
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise DatasetError(f"cannot read calibration image {path}")
            if self.task is not None:
                progress.advance(self.task)
            return {input_name: frames_to_input([frame], size, meta.mean, meta.std)}

        def __len__(self) -> int:
            return len(images)

        def rewind(self) -> None:
            self.index = 0

    return ImageReader()


def attention_matmuls(proto: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two inputs are both activations (q @ k^T, probabilities @ v)."""
    constants = {i.name for i in proto.graph.initializer}
    constants |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def output_heads(proto: onnx.ModelProto) -> list[str]:
    """The heavy node(s) producing the graph outputs (the classifier): kept in float, because int8
    logits (a step of range/127) would tie classes and flip the argmax; the layer is tiny anyway."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    heads = []
    for out in proto.graph.output:
        node = producers.get(out.name)
        for _ in range(16):  # through ArgMax, Cast, Resize, Transpose ... back to the last heavy op
            if node is None or node.op_type in QUANTIZED_OP_TYPES:
                break
            node = producers.get(node.input[0]) if node.input else None
        if node is not None and node.op_type in QUANTIZED_OP_TYPES:
            heads.append(node.name)
    return heads


def upsampled_convs(proto: onnx.ModelProto) -> list[str]:
    """Conv nodes whose output is bilinearly upsampled (the folded decoder's per-stage projections).

    Kept in float: ONNX Runtime runs a float Conv -> Resize chain in its blocked NCHWc layout, while a
    quantized Conv hands Resize an NHWC-converted, dequantized tensor that falls back to the generic
    Resize kernel; on the bundled model at 512x512 those three Resizes alone took longer than every
    quantized MatMul together."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    return sorted(
        {
            producers[n.input[0]].name
            for n in proto.graph.node
            if n.op_type == "Resize" and n.input[0] in producers and producers[n.input[0]].op_type == "Conv"
        }
    )


def census(proto: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """(quantized, float) counts of the heavy op types: quantized means its weight (second input) comes
    from a DequantizeLinear; the data input alone says nothing, as a float node may share a dequantized
    activation with a quantized one. A MatMulInteger (the CPU form's dynamically quantized MatMul) counts as a
    quantized MatMul."""
    dq_outputs = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for n in proto.graph.node:
        if n.op_type == "MatMulInteger":
            quantized["MatMul"] += 1
        elif n.op_type in QUANTIZED_OP_TYPES:
            (quantized if n.input[1] in dq_outputs else floating)[n.op_type] += 1
    return dict(quantized), dict(floating)


def quantize_int8(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calib_dir: str | Path,
    count: int = 64,
    *,
    size: tuple[int, int] | None = None,
    method: str = "minmax",
    quantize_attention: bool = False,
    per_channel: bool = True,
    show_progress: bool = True,
    op_types: Sequence[str] = QUANTIZED_OP_TYPES,
    exclude: Sequence[str] = (),
    keep_cpu_ops: bool = False,
) -> QuantizeResult:
    """Statically quantize ``onnx_in`` to a symmetric int8 Q/DQ graph calibrated on ``count`` images of
    ``calib_dir``; the segrt metadata of the source is carried over (with ``extra["precision"] = "int8"``).

    ``op_types`` (a subset of :data:`QUANTIZED_OP_TYPES`) and ``exclude`` (more node names to keep in float)
    narrow what is quantized; :mod:`segrt.export.passes.quantize_cpu` uses them for its Q/DQ convolutions.
    The file is for TensorRT, so ops written for ONNX Runtime's CPU provider (:mod:`.cpu_form`) are made
    portable again unless ``keep_cpu_ops`` (the CPU INT8 form's convolution step)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION_METHODS)}")
    proto, meta = load_network(onnx_in)
    if not keep_cpu_ops and is_cpu_form(proto):
        proto = to_portable_ops(proto)
        meta.extra.pop("ops", None)
    unknown = sorted(set(op_types) - set(QUANTIZED_OP_TYPES))
    if not op_types or unknown:
        raise ConfigError(f"op types to quantize must be a non-empty subset of {', '.join(QUANTIZED_OP_TYPES)}, "
                          f"got {list(op_types)}")
    input_name, hw = _input_name_and_size(proto, meta, size)
    images = calibration_images(calib_dir, count)
    excluded = [n.name for n in proto.graph.node if n.op_type in FLOAT_OP_TYPES]
    excluded += output_heads(proto) + upsampled_convs(proto) + list(exclude)
    if not quantize_attention:
        excluded += attention_matmuls(proto)
    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "DedicatedQDQPair": True,
        # int32 bias DequantizeLinear nodes are rejected by TensorRT's parser; ORT fuses float biases too.
        "QuantizeBias": False,
        # Output channels: axis 0 of Conv weights (O, I, kH, kW), axis 1 of MatMul weights (K, N).
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Gemm": 0},
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    scratch = scratch_folder(onnx_out, ".quantize.")  # removed after the with below
    with quiet_quantization_log():
        with (
            scratch as tmp,
            make_progress(transient=True) if show_progress else _NoProgress() as progress,
        ):
            raw = Path(tmp) / "quantized.onnx"
            reader = _calibration_reader(images, input_name, hw, meta, progress if show_progress else None)
            try:
                quantize_static(
                    proto,
                    raw,
                    reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types),
                    per_channel=per_channel,
                    reduce_range=False,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=calib_method,
                    extra_options=extra,
                )
            except (DatasetError, ConfigError):
                raise
            except Exception as exc:
                raise ExportError(f"INT8 quantization of {onnx_in} failed: {type(exc).__name__}: {exc}") from exc
            quantized = onnx.load(str(raw))
    meta.extra = {
        **meta.extra,
        "precision": "int8",
        "calibration": f"{len(images)} images from {Path(calib_dir).name}, {method}, {hw[0]}x{hw[1]}",
    }
    dedicate_activation_pairs(quantized)
    _restore_metadata(quantized, proto, meta)
    try:
        onnx.checker.check_model(quantized)
    except Exception as exc:
        raise ExportError(f"quantized graph fails onnx.checker: {exc}") from exc
    # Atomic (never a half-written model under the final name), readable by everyone (umask), failures named.
    sinks.write_bytes(onnx_out, quantized.SerializeToString(), "INT8 model")
    q, f = census(quantized)
    return QuantizeResult(onnx_out, len(images), q, f)


def dedicate_activation_pairs(proto: onnx.ModelProto) -> int:
    """One Q -> DQ pair per consumer of every quantized activation, kept distinct; returns pairs added.

    ONNX Runtime's CPU provider runs int8 Q/DQ graphs on its fast unsigned (u8 x s8, AMX / VNNI)
    kernels by rewriting each signed Q -> DQ pair to unsigned, but only a Q node with a single
    consumer qualifies. The quantizer's dedicated pairs stop at the first DQ, which can still feed
    two nodes (a LayerNorm output read by the q projection and, through a Transpose, by the
    sequence-reduction conv); and ONNX Runtime's common-subexpression elimination merges identical
    Q nodes of one tensor back into one. So each extra consumer gets its own pair here, and the Q
    nodes of one tensor get distinct ``axis`` attributes, which per-tensor quantization ignores
    (ONNX: axis only applies to per-axis scales) but which keeps them from being merged.
    """
    from onnx import shape_inference

    graph = proto.graph
    constants = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in list(shape_inference.infer_shapes(proto).graph.value_info) + list(graph.input)
        if vi.type.tensor_type.HasField("shape")
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added = 0
    new_order: list[onnx.NodeProto] = []
    for node in list(graph.node):
        new_order.append(node)
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        q = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] == node.input[0]), None)
        users = consumers.get(node.output[0], [])
        if q is None or q.input[0] in constants or len(users) < 2:
            continue
        for i, user in enumerate(users[1:], start=1):
            q2, dq2 = onnx.NodeProto(), onnx.NodeProto()
            q2.CopyFrom(q)
            dq2.CopyFrom(node)
            q2.name, dq2.name = f"{q.name}_user{i}", f"{node.name}_user{i}"
            q2.output[0] = f"{q.output[0]}_user{i}"
            dq2.input[0], dq2.output[0] = q2.output[0], f"{node.output[0]}_user{i}"
            for j, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[j] = dq2.output[0]
            new_order += [q2, dq2]
            added += 1
    del graph.node[:]
    graph.node.extend(new_order)
    by_tensor: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            by_tensor.setdefault(node.input[0], []).append(node)
    for tensor, qs in by_tensor.items():
        rank = ranks.get(tensor)
        if len(qs) < 2 or rank is None or len(qs) > 2 * rank:
            continue
        for axis, q in zip(range(-rank, rank), qs):
            for attr in [a for a in q.attribute if a.name == "axis"]:
                q.attribute.remove(attr)
            q.attribute.append(onnx.helper.make_attribute("axis", axis))
    return added


def _restore_metadata(quantized: onnx.ModelProto, source: onnx.ModelProto, meta: ModelMetadata) -> None:
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)  # the source's entries in their order
    meta.to_onnx(quantized)  # segrt's entry updated in place
    quantized.producer_name = source.producer_name
    quantized.producer_version = source.producer_version
    quantized.doc_string = source.doc_string + " (int8 Q/DQ)"


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def label_agreement(
    reference: str | Path, candidate: str | Path, frames: Sequence[np.ndarray], size: tuple[int, int] | None = None
) -> list[float]:
    """Per frame, the fraction of output pixels whose label (argmax) the two models agree on, in ONNX Runtime."""
    import onnxruntime as ort

    meta = require_metadata(onnx.load(str(reference), load_external_data=False), Path(reference))
    hw = size or meta.input_size
    if hw is None:
        raise ConfigError("dynamic model: pass the comparison size (HxW)")
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, candidate)]
    out = []
    for frame in frames:
        x = frames_to_input([frame], hw, meta.mean, meta.std)
        a, b = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in sessions)
        if a.ndim == 4:
            a, b = a.argmax(1), b.argmax(1)
        out.append(float((a == b).mean()))
    return out
