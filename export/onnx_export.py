"""Export a SegFormer to ONNX with the dynamo exporter, pin versions, embed metadata, verify numerically.

Every export is checked against PyTorch on real images: the legacy TorchScript exporter is known to
produce a SegFormer graph that runs but is wrong (relative error 0.9), so a graph that merely loads
proves nothing.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from segrt.export.methods.folding import fold_decoder, has_foldable_head
from segrt.export.methods.merging import ops as merge_ops
from segrt.export.model.segformer import SegFormer
from segrt.export.passes import frame_graph
from segrt.export.passes.compare import relative_error
from segrt.export.passes.cpu_form import CPU_TAG, OPS, to_cpu_ops
from segrt.export.passes.gelu_order import reorder_gelu
from segrt.export.passes.versions import ir_version_for
from segrt.runtime import sinks
from segrt.runtime.errors import ExportError, ExportVerificationError
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input

DEFAULT_OPSET = 17  # first opset with native LayerNormalization (avoids an FP16 SegFormer bug in TRT)
MAX_OPSET = 21  # highest opset of onnx 1.16; what TensorRT parses is checked per version by `segrt build`
TOLERANCE = 1e-4
OUTPUTS = ("logits", "labels", "upsampled")
FORMS = ("logits", "frame")  # float NCHW in, logits out / uint8 BGR frame in, mask out (frame_graph)


class ExportHead(nn.Module):
    """Wraps a model to choose what the graph returns.

    - ``logits``: (B, K, H/4, W/4) float, the runtime upsamples and takes the argmax.
    - ``labels``: (B, H/4, W/4) uint8 via in-graph ArgMax: a K-times smaller output to copy back.
    - ``upsampled``: (B, K, H, W) float logits at input resolution.
    """

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        if output not in OUTPUTS:
            raise ExportError(f"unknown output {output!r}; expected one of {OUTPUTS}")
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.output == "labels":
            return logits.argmax(1).to(torch.uint8)
        if self.output == "upsampled":
            return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        return logits


@dataclass
class ExportResult:
    path: Path
    max_rel_error: float
    label_agreement: float
    images: int
    form: str = "logits"
    frame_agreement: float | None = None  # frame form: worst share of mask pixels equal to the reference path


def _dynamo_export(module: nn.Module, example: torch.Tensor, dynamic: bool, opset: int,
                   dynamic_batch: bool = False) -> onnx.ModelProto:
    dynamic_shapes = None
    if dynamic or dynamic_batch:
        # A batch of 2 keeps torch.export from specialising the batch dimension to the example's 1.
        example = example.expand(2, -1, -1, -1).contiguous()
        dyn = torch.export.Dim.DYNAMIC
        dynamic_shapes = {"x": {0: dyn, 2: dyn, 3: dyn} if dynamic else {0: dyn}}
    with warnings.catch_warnings(), _quiet_loggers():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                        input_names=["pixel_values"], output_names=["output"],
                                        dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
                                        custom_translation_table=merge_ops.translation_table())
        except Exception as exc:
            raise ExportError(f"the dynamo ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
    if program is None:
        raise ExportError("the dynamo ONNX exporter returned no program")
    return program.model_proto


class _quiet_loggers:
    """The exporter logs every translation step at INFO; keep the CLI readable."""

    def __enter__(self):
        self.saved = {n: logging.getLogger(n).level for n in ("torch", "onnxscript", "torch.onnx")}
        for n in self.saved:
            logging.getLogger(n).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for n, level in self.saved.items():
            logging.getLogger(n).setLevel(level)


def pin_versions(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Force the default-domain opset and the lowest IR version that carries it (:func:`ir_version_for`)."""
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        proto = onnx.version_converter.convert_version(proto, opset)
    proto.ir_version = ir_version_for(opset)
    if proto.ir_version < 10:
        _drop_ir10_metadata(proto)
    return proto


def _drop_ir10_metadata(proto: onnx.ModelProto) -> None:
    """The exporter's notes on nodes, values and graphs (metadata_props there came with IR 10; a file written at a
    lower IR version should not carry them). The model's own metadata_props, segrt's record, are IR 1 and stay."""
    def graph(g: onnx.GraphProto) -> None:
        del g.metadata_props[:]
        for value in (*g.input, *g.output, *g.value_info):
            del value.metadata_props[:]
        for tensor in g.initializer:
            del tensor.metadata_props[:]
        for node in g.node:
            node_and_subgraphs(node)

    def node_and_subgraphs(node: onnx.NodeProto) -> None:
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.HasField("g"):
                graph(attr.g)
            for sub in attr.graphs:
                graph(sub)

    graph(proto.graph)
    for function in proto.functions:
        del function.metadata_props[:]
        for value in function.value_info:
            del value.metadata_props[:]
        for node in function.node:
            node_and_subgraphs(node)


def embed_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    del proto.metadata_props[:]  # a fresh export carries segrt's record only
    metadata.to_onnx(proto)
    proto.producer_name = "segrt"
    proto.producer_version = metadata.segrt_version
    proto.doc_string = f"SegFormer exported by segrt {metadata.segrt_version}: {metadata.num_classes} classes"


def verification_frames(images: Sequence[np.ndarray] | None, size: tuple[int, int]) -> list[np.ndarray]:
    if images:
        return list(images)
    from segrt.runtime.samples import sample_frames

    return sample_frames()


def verify_onnx(path_or_bytes: str | Path | bytes, module: nn.Module, frames: Sequence[np.ndarray],
                metadata: ModelMetadata, size: tuple[int, int], tolerance: float = TOLERANCE) -> tuple[float, float]:
    """Compare ONNX Runtime against PyTorch on real frames; returns (max relative error, label agreement)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                providers=["CPUExecutionProvider"])
    errors, agree = [], []
    for frame in frames:
        x = frames_to_input([frame], size, metadata.mean, metadata.std)
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).numpy()
        actual = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        if actual.shape != expected.shape:
            raise ExportVerificationError(f"ONNX output shape {actual.shape} differs from PyTorch {expected.shape}")
        if expected.dtype == np.uint8:
            agree.append(float((actual == expected).mean()))
            errors.append(1.0 - agree[-1])
        else:
            errors.append(relative_error(actual, expected))
            agree.append(float((actual.argmax(1) == expected.argmax(1)).mean()))
    worst = max(errors)
    if not np.isfinite(worst) or worst > tolerance:
        raise ExportVerificationError(
            f"exported graph does not reproduce the PyTorch model: relative error {worst:.3g} > {tolerance:g} "
            f"(label agreement {min(agree):.4f}) on {len(frames)} real images")
    return worst, min(agree)


def export_onnx(
    model: SegFormer | nn.Module,
    metadata: ModelMetadata,
    out: str | Path,
    size: tuple[int, int] = (512, 512),
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    output: str = "logits",
    verify_images: Sequence[np.ndarray] | None = None,
    tolerance: float = TOLERANCE,
    transform=None,
    fold: bool = True,
    form: str = "logits",
    frame_size: tuple[int, int] | None = None,
    output_stride: int = 1,
    post: str = "refine",
    dynamic_batch: bool = False,
    ops: str = "cpu",
) -> ExportResult:
    """Export, pin versions, embed metadata, check the graph, and verify it against PyTorch.

    ``transform`` (ModelProto -> ModelProto) runs before verification, so graph rewrites are verified too.
    ``fold`` exports the decoder-folded model (:mod:`.folding`, an exact rewrite) but verifies against
    ``model`` as given. ``segrt`` token-merge ops in the graph get their model-local function definitions.

    ``form="frame"`` then wraps the verified logits graph into the frame form (:mod:`.passes.frame_graph`:
    uint8 BGR frames of ``frame_size`` or any size in, masks at ``output_stride`` out, ``post`` "refine" or
    "dense") and verifies that against the reference path (cv2 resize, logits, upsampling, argmax) on the real
    frames, at two camera sizes when the frame size is open. The Python default stays "logits" (what evaluation,
    quantization and the method recipes consume); ``segrt export`` defaults to "frame".

    ``dynamic_batch`` keeps the input size fixed but the batch open (several cameras in one run); ``dynamic``
    opens batch, height and width.

    ``ops="cpu"`` (default) writes ops in the forms ONNX Runtime's CPU provider runs fastest (:mod:`.passes.cpu_form`:
    narrow LayerNorms, token-merge sums; verified below like any rewrite); ``"portable"`` keeps them as exported.
    Files for TensorRT need not care: ``segrt build``, the Q/DQ quantizer and the FP16 pass make them portable.
    """
    if ops not in OPS:
        raise ExportError(f"unknown ops form {ops!r}; expected one of {', '.join(OPS)}")
    if form not in FORMS:
        raise ExportError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if form == "frame" and output != "logits":
        raise ExportError(f"the frame form wraps a logits graph; output {output!r} is for the logits form only")
    if not 17 <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} unsupported: segrt exports opset 17..{MAX_OPSET} "
            "(TensorRT before 10.15 parses up to 20; `segrt build` checks the target's limit)"
        )
    model = model.eval()
    module = ExportHead(model, output).eval()  # the reference the graph is verified against
    fold = fold and has_foldable_head(model)
    exported = ExportHead(fold_decoder(model), output).eval() if fold else module
    example = torch.from_numpy(frames_to_input([np.zeros((*size, 3), np.uint8)], size, metadata.mean, metadata.std))
    proto = _dynamo_export(exported, example, dynamic, opset, dynamic_batch)
    proto = merge_ops.attach_local_functions(pin_versions(proto, opset))
    proto = reorder_gelu(proto)  # lets ONNX Runtime fuse GELU (see .gelu_order); verified below like any rewrite
    if transform is not None:
        proto = transform(proto)
    cpu_changes: list[str] = []
    if ops == "cpu":
        proto, cpu_changes = to_cpu_ops(proto)
    meta = ModelMetadata(**{**metadata.__dict__, "extra": dict(metadata.extra)})
    meta.input_size = None if dynamic else tuple(size)
    meta.output = "labels" if output == "labels" else "logits"
    if fold:
        meta.extra["decoder"] = "folded"
    if cpu_changes:
        meta.extra["ops"] = CPU_TAG
    segformer = next((m for m in model.modules() if isinstance(m, SegFormer)), None)
    if segformer is not None:
        meta.architecture = segformer.config.to_json()
    from segrt import __version__

    meta.segrt_version = __version__
    embed_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported graph fails onnx.checker: {exc}") from exc
    out = Path(out)
    sinks.prepare_folder(out.parent, f"folder of {out.name}")  # before the verification: fail early
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    data = buf.getvalue()
    frames = verification_frames(verify_images, size)
    err, agree = verify_onnx(data, module, frames, meta, size, tolerance)
    if dynamic:  # a dynamic graph must also be right at a size it was not traced at
        other = (size[0] + 64, size[1] - 32)
        e2, a2 = verify_onnx(data, module, frames[:1], meta, other, tolerance)
        err, agree = max(err, e2), min(agree, a2)
    if form == "logits":
        sinks.write_bytes(out, data, "ONNX model")  # atomic: never a half-written model under the final name
        return ExportResult(out, err, agree, len(frames))
    framed, frame_agree = frame_graph.wrap_verified(proto, frames, frame_size=frame_size, output_stride=output_stride,
                                                    post=post)
    buf = io.BytesIO()
    onnx.save_model(framed, buf)
    sinks.write_bytes(out, buf.getvalue(), "ONNX model")
    return ExportResult(out, err, agree, len(frames), form, frame_agree)
