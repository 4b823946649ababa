"""`segrt verify`: a built engine (or a second ONNX) against the reference ONNX in ONNX Runtime, on real
images, with Polygraphy's Comparator. Reports per-output error and segmentation label agreement.

With ``candidate`` an engine this needs TensorRT and the GPU; with ``candidate`` an ONNX (the FP16 or
INT8 graph of a bundle) it runs anywhere, which is how the comparison code is tested off-GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrt.engines.model_info import inspect_model
from segrt.runtime.errors import ConfigError
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input


@dataclass
class OutputComparison:
    name: str
    max_abs: float
    mean_abs: float
    max_rel_l2: float  # worst image: ||candidate - reference|| / ||reference||


@dataclass
class VerifyReport:
    reference: str
    candidate: str
    images: int
    passed: bool  # the worst image's label agreement reaches min_agreement: what a mask user sees
    label_agreement: float  # worst image
    mean_label_agreement: float
    outputs: list[OutputComparison] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0
    # Polygraphy's element-wise comparison at atol/rtol, reported but not deciding: a good FP16 engine
    # usually has some logit outside 1e-2 somewhere while every label agrees.
    within_tolerance: bool = False


def simple_compare_func(atol: float, rtol: float):
    """Polygraphy's element-wise comparison at ``atol``/``rtol``, spelled as the installed polygraphy has it:
    ``SimpleCompareFunc`` in newer releases (where ``CompareFunc.simple`` is deprecated, removal announced for
    0.60), ``CompareFunc.simple`` in 0.49.x, which has no ``SimpleCompareFunc``."""
    from polygraphy import comparator

    simple = getattr(comparator, "SimpleCompareFunc", None)
    if simple is not None:
        return simple(atol=atol, rtol=rtol)
    return comparator.CompareFunc.simple(atol=atol, rtol=rtol)


_PLUGIN_LOGGER = None


def _runner(path: Path, onnx_bytes_for: str):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    if path.suffix.lower() == ".onnx":
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name=onnx_bytes_for)
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from segrt.engines.manifest import load_checked_engine
    from segrt.engines.versions import detect_gpu, import_tensorrt
    from segrt.runtime.backends.tensorrt import prepare_runtime

    trt = import_tensorrt()
    # The logger must outlive the plugin registry that keeps it: one per process, held by the module.
    global _PLUGIN_LOGGER
    if _PLUGIN_LOGGER is None:
        _PLUGIN_LOGGER = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(_PLUGIN_LOGGER, "")  # engines may embed standard plugins
    gpu = detect_gpu(0)
    if gpu is None:
        from segrt.runtime.errors import BackendUnavailableError

        raise BackendUnavailableError("verifying an engine needs the GPU it was built for; none is visible")
    manifest, data = load_checked_engine(path, trt.__version__, gpu.compute_capability)
    # The runtime settings the backend uses too (DLA core, host code of version-compatible engines).
    runtime = trt.Runtime(_PLUGIN_LOGGER)
    prepare_runtime(runtime, manifest.version_compatible, manifest.dla_core)
    return TrtRunner(EngineFromBytes(data, runtime=runtime), name=onnx_bytes_for)


def verify(reference: str | Path, candidate: str | Path, frames: Sequence[np.ndarray],
           atol: float = 1e-2, rtol: float = 1e-2, min_agreement: float = 0.99, quiet: bool = True) -> VerifyReport:
    """Run both models on ``frames`` (BGR uint8) and compare every output."""
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    if quiet:
        G_LOGGER.module_severity = G_LOGGER.WARNING
    reference, candidate = Path(reference), Path(candidate)
    _model, info = inspect_model(reference)
    if len(info.inputs) != 1:
        raise ConfigError(f"{reference.name}: expected one image input, found {len(info.inputs)}")
    meta = info.metadata or ModelMetadata(classes=["class_0"], input_size=None)
    shape = info.inputs[0].shape
    fixed = all(isinstance(d, int) for d in shape[2:])
    size = (int(shape[2]), int(shape[3])) if fixed else (meta.input_size or (512, 512))  # type: ignore[arg-type]
    feeds = [{info.inputs[0].name: frames_to_input([f], size, meta.mean, meta.std)} for f in frames]
    if not feeds:
        raise ConfigError("no images to verify on")

    runners = [_runner(candidate, "candidate"), _runner(reference, "reference")]
    results = Comparator.run(runners, data_loader=feeds)
    accuracy = Comparator.compare_accuracy(results, compare_func=simple_compare_func(atol, rtol))

    cand_iters, ref_iters = results[0][1], results[1][1]
    outputs: dict[str, OutputComparison] = {}
    agreements = []
    for cand, ref in zip(cand_iters, ref_iters):
        for name, expected in ref.items():
            actual = np.asarray(cand[name])
            expected = np.asarray(expected)
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            rel = float(np.linalg.norm(diff) / max(float(np.linalg.norm(expected.astype(np.float64))), 1e-12))
            prev = outputs.get(name)
            outputs[name] = OutputComparison(name, max(float(diff.max()), prev.max_abs if prev else 0.0),
                                        max(float(diff.mean()), prev.mean_abs if prev else 0.0),
                                        max(rel, prev.max_rel_l2 if prev else 0.0))
        name = next(iter(ref.keys()))
        expected, actual = np.asarray(ref[name]), np.asarray(cand[name])
        if expected.ndim == 4:
            agreements.append(float((actual.argmax(1) == expected.argmax(1)).mean()))
        else:
            agreements.append(float((actual == expected).mean()))
    worst = min(agreements)
    return VerifyReport(reference=str(reference), candidate=str(candidate), images=len(feeds),
                        passed=worst >= min_agreement, within_tolerance=bool(accuracy), label_agreement=worst,
                        mean_label_agreement=float(np.mean(agreements)), outputs=list(outputs.values()),
                        atol=atol, rtol=rtol)
