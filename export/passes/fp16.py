"""FP16 ONNX for strongly typed TensorRT (11.x has no FP16 builder flag): mixed precision in the graph.

Weights and activations become FP16 except where FP16 is known to break transformer segmentation:
LayerNormalization, Softmax and reductions stay FP32, and so do the element-wise nodes that produce
their inputs (the residual sums feeding LayerNorm overflow FP16 first). Network inputs and outputs keep
their types, so the runtime feeds float32 and reads float32 logits (or uint8 labels) either way.

The conversion is ONNX Runtime's maintained FP16 converter (``onnxruntime.transformers.float16``) with
an op and node block list; the result is checked against the FP32 graph in ONNX Runtime on real images.
Needs only onnx and onnxruntime (no torch), so it also runs inside ``segrt build``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner

from segrt.export.passes.cpu_form import to_portable_ops
from segrt.runtime import sinks
from segrt.runtime.errors import ExportError, ExportVerificationError
from segrt.runtime.metadata import ModelMetadata

# Kept in FP32: numerically fragile in FP16 (LayerNorm/Softmax overflow, long sums).
FP32_OPS = ("LayerNormalization", "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare",
            "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin", "ReduceProd")
# Producers of an FP32 op's inputs that are kept in FP32 too: cheap element-wise arithmetic whose FP16
# result would already have overflowed or lost the small residual updates.
FP32_PRODUCERS = ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt")
# Defaults of 0.05 relative logit error and 99% label agreement: FP16 rounding (~1e-3 per op) compounds
# over a dozen transformer blocks; more than this means an overflow, not rounding.
TOLERANCE = 5e-2
MIN_AGREEMENT = 0.99


@dataclass
class Fp16Result:
    path: Path
    max_rel_error: float
    label_agreement: float
    images: int
    fp32_nodes: int  # nodes left in FP32 by the block lists


def _reduces(node: onnx.NodeProto) -> bool:
    """Scatter with a reduction accumulates (token merging sums features): FP32, and ONNX Runtime's CPU
    kernel has no FP16 version to verify it with."""
    return node.op_type in ("ScatterElements", "ScatterND") and any(
        a.name == "reduction" and a.s not in (b"", b"none") for a in node.attribute)


def fp32_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes to keep in FP32 by name: producers of the blocked op types' inputs, and reducing scatters."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names = [node.name for node in model.graph.node if _reduces(node) and node.name]
    for node in model.graph.node:
        if node.op_type not in FP32_OPS:
            continue
        for name in node.input:
            producer = producers.get(name)
            if producer is not None and producer.op_type in FP32_PRODUCERS and producer.name:
                names.append(producer.name)
    return sorted(set(names))


def _name_nodes(model: onnx.ModelProto) -> None:
    """The node block list works by name; give unnamed nodes a stable one."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP32 ModelProto -> mixed-precision FP16 ModelProto (inputs/outputs unchanged)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # FP16 is for TensorRT: the portable ops first (LayerNorm, kept in FP32 below; the portable merge body), while
    # the merge functions can still be swapped. Then local functions (token merging) are inlined: the converter
    # does not look inside function bodies, and TensorRT inlines them anyway.
    model = to_portable_ops(model)
    model = (
        onnx.inliner.inline_local_functions(model)
        if model.functions
        else onnx.ModelProto.FromString(model.SerializeToString())
    )
    _name_nodes(model)
    blocked_nodes = fp32_node_names(model)
    # The converter's default list names ops without FP16 kernels in ONNX Runtime; keeping it lets the
    # same file be verified on the CPU.
    op_block = sorted(set(FP32_OPS) | set(DEFAULT_OP_BLOCK_LIST))
    try:
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=op_block, node_block_list=blocked_nodes
        )
    except Exception as exc:
        raise ExportError(f"FP16 conversion failed: {type(exc).__name__}: {exc}") from exc
    _drop_duplicate_casts(converted.graph)
    _topological_sort(converted.graph)
    _tag_metadata(converted)
    # The converter retypes value_info entries of initializers it then keeps in FP32; re-derive all
    # intermediate types from the graph, which also proves the result is type-consistent.
    del converted.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the FP16 graph is not type-consistent: {exc}") from exc


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    """An initializer shared by several FP32-kept nodes gets one identical Cast per consumer, all with the
    same output name (not SSA); keep the first."""
    seen: dict[str, onnx.NodeProto] = {}
    keep = []
    for node in graph.node:
        first = seen.get(node.output[0]) if node.op_type == "Cast" and node.output else None
        if first is not None:
            if first.input != node.input or first.attribute != node.attribute:
                raise ExportError(f"FP16 conversion produced two different nodes writing {node.output[0]}")
            continue
        if node.op_type == "Cast" and node.output:
            seen[node.output[0]] = node
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its input casts at the end; TensorRT's parser imports nodes in file order."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError(f"FP16 graph has a cycle or a dangling input at {pending[0].name}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def _tag_metadata(model: onnx.ModelProto) -> None:
    meta = ModelMetadata.from_onnx(model)
    if meta is not None:
        meta.extra = {**meta.extra, "precision": "fp16"}
        meta.to_onnx(model)


def _session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def compare_in_onnxruntime(
    reference: bytes, candidate: bytes, frames: Sequence[np.ndarray], metadata: ModelMetadata
) -> tuple[float, float]:
    """Run both graphs on the same real frames in ONNX Runtime (CPU).

    Returns (max relative L2 error of the outputs, min per-image label agreement)."""
    from segrt.export.passes.compare import relative_error
    from segrt.runtime.preprocess import frames_to_input

    try:
        ref, cand = _session(reference), _session(candidate)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        raise ExportVerificationError(f"ONNX Runtime cannot load the graphs to compare: {exc}") from exc
    shape = ref.get_inputs()[0].shape
    size = (shape[2], shape[3]) if all(isinstance(d, int) for d in shape[2:]) else (metadata.input_size or (512, 512))
    errors, agreement = [], []
    for frame in frames:
        x = frames_to_input([frame], size, metadata.mean, metadata.std)
        expected = ref.run(None, {ref.get_inputs()[0].name: x})[0]
        try:
            actual = cand.run(None, {cand.get_inputs()[0].name: x})[0]
        except Exception as exc:  # noqa: BLE001
            raise ExportVerificationError(f"ONNX Runtime cannot run the FP16 graph: {exc}") from exc
        if expected.dtype == np.uint8 or expected.ndim == 3:
            agreement.append(float((actual == expected).mean()))
            errors.append(1.0 - agreement[-1])
        else:
            errors.append(relative_error(actual.astype(np.float32), expected))
            agreement.append(float((actual.argmax(1) == expected.argmax(1)).mean()))
    return max(errors), min(agreement)


def export_fp16(
    source: str | Path,
    out: str | Path,
    frames: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
    min_agreement: float = MIN_AGREEMENT,
    verify: bool = True,
) -> Fp16Result:
    """Convert the FP32 ONNX ``source`` to FP16 at ``out``, verified against it in ONNX Runtime."""
    source, out = Path(source), Path(out)
    model = onnx.load(str(source))
    meta = ModelMetadata.from_onnx(model)
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        raise ExportError(f"{source} already has FP16 weights")
    converted = to_fp16(model)
    try:
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ExportError(f"the FP16 graph fails onnx.checker: {exc}") from exc
    buf = io.BytesIO()
    onnx.save_model(converted, buf)
    data = buf.getvalue()
    err, agree, count = float("nan"), float("nan"), 0
    if verify:
        if frames is None:
            from segrt.runtime.samples import sample_frames

            frames = sample_frames()
        err, agree = compare_in_onnxruntime(
            source.read_bytes(), data, frames, meta or ModelMetadata(classes=["class_0"], input_size=None)
        )
        count = len(frames)
        if not np.isfinite(err) or err > tolerance or agree < min_agreement:
            raise ExportVerificationError(
                f"FP16 graph differs from FP32 on {count} real images: relative error {err:.3g} (limit {tolerance:g}), "
                f"label agreement {agree:.4f} (limit {min_agreement})"
            )
    sinks.write_bytes(out, data, "FP16 model")  # atomic, creating the folder; failures name the file
    kept = sum(1 for n in converted.graph.node if n.op_type in FP32_OPS) + len(fp32_node_names(converted))
    return Fp16Result(out, err, agree, count, kept)
