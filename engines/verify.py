"""`segrt verify`: a built engine (or a second ONNX) against the reference ONNX in ONNX Runtime, on real
images, with Polygraphy's Comparator. Reports per-output error and segmentation label agreement.

With ``candidate`` an engine this needs TensorRT and the GPU; with ``candidate`` an ONNX (the FP16 or
INT8 graph of a bundle) it runs anywhere, which is how the comparison code is tested off-GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrt.engines.model_info import TensorInfo, inspect_model
from segrt.runtime.errors import BackendError, ConfigError, SegrtError
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


def _fixed(dim: object) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _shown(shape: Sequence[object]) -> str:
    return "x".join(str(d) if _fixed(d) else "?" for d in shape)


def _image_input(path: Path, inputs: Sequence[TensorInfo], frame: bool = False) -> TensorInfo:
    """The model's one image input: N x 3 x H x W, or N x H x W x 3 uint8 for a frame-form model; a
    ConfigError names what differs."""
    if len(inputs) != 1:
        raise ConfigError(f"{path.name}: expected one image input, found {len(inputs)}")
    image = inputs[0]
    if frame:
        if len(image.shape) != 4 or (_fixed(image.shape[3]) and image.shape[3] != 3):
            raise ConfigError(f"{path.name}: input {image.name!r} has shape {_shown(image.shape)}; "
                              "expected N x H x W x 3 (a frame-form model's uint8 frame)")
        return TensorInfo(image.name, (image.shape[0], 3, *image.shape[1:3]), image.dtype)  # compared as NCHW
    if len(image.shape) != 4 or (_fixed(image.shape[1]) and image.shape[1] != 3):
        raise ConfigError(f"{path.name}: input {image.name!r} has shape {_shown(image.shape)}; "
                          "expected N x 3 x H x W (one image)")
    return image


def _input_size(ref: TensorInfo, cand: TensorInfo | None, meta: ModelMetadata, reference: Path,
                candidate: Path) -> tuple[int, int]:
    """One (H, W) both models accept: a fixed size of either (equal when both are fixed), else the
    reference's metadata size. Both models see the same tensor, so outputs compare element by element."""
    ref_hw = tuple(ref.shape[2:])
    cand_hw = tuple(cand.shape[2:]) if cand is not None else (None, None)
    size: list[int | None] = [None, None]
    for axis, (r, c) in enumerate(zip(ref_hw, cand_hw)):
        if _fixed(r) and _fixed(c) and r != c:
            raise ConfigError(f"{candidate.name} takes {_shown(cand_hw)} images but {reference.name} takes "
                              f"{_shown(ref_hw)} (H x W): their outputs cannot be compared")
        size[axis] = r if _fixed(r) else c if _fixed(c) else None
    if size[0] is None or size[1] is None:
        default = meta.input_size or (512, 512)
        size = [size[0] or default[0], size[1] or default[1]]
    return int(size[0]), int(size[1])  # type: ignore[arg-type]


def _check_outputs(reference: Path, candidate: Path, ref_outputs: Sequence[tuple[str, Sequence[object]]],
                   cand_outputs: Sequence[tuple[str, Sequence[object]]]) -> None:
    """Outputs are matched by position (names may differ); counts, ranks and fixed dimensions must agree."""
    if len(ref_outputs) != len(cand_outputs):
        raise ConfigError(f"{candidate.name} has {len(cand_outputs)} output(s) but {reference.name} has "
                          f"{len(ref_outputs)}: outputs are compared by position")
    for i, ((ref_name, ref_shape), (cand_name, cand_shape)) in enumerate(zip(ref_outputs, cand_outputs)):
        differ = len(ref_shape) != len(cand_shape) or any(
            _fixed(r) and _fixed(c) and r != c for r, c in zip(ref_shape, cand_shape))
        if differ:
            what = " (class count)" if len(ref_shape) == len(cand_shape) == 4 and ref_shape[1] != cand_shape[1] else ""
            raise ConfigError(f"output {i} differs in shape{what}: {candidate.name} {cand_name!r} is "
                              f"{_shown(cand_shape)}, {reference.name} {ref_name!r} is {_shown(ref_shape)}")


def _check_classes(reference: Path, candidate: Path, ref: ModelMetadata | None, cand: ModelMetadata | None) -> None:
    if ref is not None and cand is not None and len(ref.classes) != len(cand.classes):
        raise ConfigError(f"{candidate.name} has {len(cand.classes)} classes but {reference.name} has "
                          f"{len(ref.classes)}")


def _numpy_dtype(dtype: object) -> np.dtype | None:
    """A runner's input dtype as numpy's (Polygraphy reports numpy types or its own DataType)."""
    try:
        from polygraphy.datatype import DataType

        if isinstance(dtype, DataType):
            return np.dtype(DataType.to_dtype(dtype, "numpy"))
        return np.dtype(dtype) if dtype is not None else None  # type: ignore[call-overload]
    except (ImportError, TypeError, AttributeError):
        return None


def _run(runner, path: Path, tensor_for: Callable[[str, Sequence[object]], list[np.ndarray]]
         ) -> list[dict[str, np.ndarray]]:
    """Every image through one runner, outputs copied out of its buffers in the model's output order.
    ``tensor_for(input name, input shape)`` gives the inputs once the runner shows its own input."""
    from polygraphy.exception import PolygraphyException

    try:
        with runner:
            try:  # Polygraphy's own types where it has them (numpy types are deprecated from 0.50)
                inputs = runner.get_input_metadata(use_numpy_dtypes=False)
            except TypeError:  # 0.49.x
                inputs = runner.get_input_metadata()
            if len(inputs) != 1:
                raise ConfigError(f"{path.name}: expected one image input, found {len(inputs)}")
            name, meta = next(iter(inputs.items()))
            dtype = _numpy_dtype(meta.dtype)
            # Cast like Polygraphy's data loader would: an FP16 graph may take float16 pixels.
            return [{k: np.array(v) for k, v in runner.infer({name: x if dtype is None else x.astype(dtype)}).items()}
                    for x in tensor_for(name, tuple(meta.shape or ()))]
    except SegrtError:
        raise
    except PolygraphyException as exc:  # a model that loads but cannot run on these inputs
        raise BackendError(f"running {path.name} failed: {exc}") from exc
    except Exception as exc:  # ONNX Runtime / TensorRT errors reach here unwrapped by Polygraphy
        raise BackendError(f"running {path.name} failed: {type(exc).__name__}: {exc}") from exc


def _frame_tensor(frame: np.ndarray, ref: TensorInfo, cand: TensorInfo | None, reference: Path,
                  candidate: Path) -> np.ndarray:
    """One BGR frame as a frame-form model's (1, H, W, 3) uint8 input: at its own size, or resized to the
    size a model fixes (both models must fix the same one)."""
    import cv2

    from segrt.runtime.frames import as_bgr

    size = _input_size(ref, cand, ModelMetadata(classes=["class_0"], input_size=tuple(frame.shape[:2])),
                       reference, candidate)
    bgr = as_bgr(frame, "frame")
    if bgr.shape[:2] != size:
        bgr = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(bgr[None])


def verify(reference: str | Path, candidate: str | Path, frames: Sequence[np.ndarray],
           atol: float = 1e-2, rtol: float = 1e-2, min_agreement: float = 0.99, quiet: bool = True) -> VerifyReport:
    """Run both models on ``frames`` (BGR uint8) and compare every output, matched by position.

    Before anything runs, the models must be comparable: one N x 3 x H x W input each, fixed input
    sizes equal, the same number of outputs with equal ranks and fixed dimensions, and (when both
    carry segrt metadata) the same class count; otherwise a ConfigError names the mismatch. A
    Polygraphy failure while running is a BackendError carrying its message."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults
    from polygraphy.logger import G_LOGGER

    if quiet:
        G_LOGGER.module_severity = G_LOGGER.WARNING
    reference, candidate = Path(reference), Path(candidate)
    _model, info = inspect_model(reference)
    meta = info.metadata or ModelMetadata(classes=["class_0"], input_size=None)
    frame_form = meta.form == "frame"
    ref_input = _image_input(reference, info.inputs, frame_form)
    cand_info = inspect_model(candidate)[1] if candidate.suffix.lower() == ".onnx" else None
    if cand_info is not None and (cand_info.metadata is not None and cand_info.metadata.form != meta.form):
        raise ConfigError(f"{candidate.name} is a {cand_info.metadata.form}-form model but {reference.name} is a "
                          f"{meta.form}-form model: their outputs cannot be compared (export both with one --form)")
    cand_input = _image_input(candidate, cand_info.inputs, frame_form) if cand_info is not None else None
    size = _input_size(ref_input, cand_input, meta, reference, candidate) if not frame_form else (0, 0)
    if cand_info is not None:
        _check_outputs(reference, candidate, [(o.name, o.shape) for o in info.outputs],
                       [(o.name, o.shape) for o in cand_info.outputs])
        _check_classes(reference, candidate, info.metadata, cand_info.metadata)
    if frame_form:  # the graphs resize and normalise themselves: they take the frames as the camera gives them
        tensors = [_frame_tensor(f, ref_input, cand_input, reference, candidate) for f in frames]
    else:
        tensors = [frames_to_input([f], size, meta.mean, meta.std) for f in frames]
    if not tensors:
        raise ConfigError("no images to verify on")

    def engine_input(name: str, shape: Sequence[object]) -> list[np.ndarray]:
        """An engine's input is known only once it is loaded: check it as the ONNX one was checked."""
        if cand_input is None:
            engine = TensorInfo(name, tuple(d if isinstance(d, int) and _fixed(d) else None for d in shape), "")
            checked = _image_input(candidate, [engine], frame_form)
            if frame_form:
                return [_frame_tensor(f, ref_input, checked, reference, candidate) for f in frames]
            _input_size(ref_input, checked, meta, reference, candidate)
        return tensors

    cand_runs = _run(_runner(candidate, "candidate"), candidate, engine_input)
    ref_runs = _run(_runner(reference, "reference"), reference, lambda _name, _shape: tensors)
    ref_names = list(ref_runs[0])
    _check_outputs(reference, candidate, [(k, v.shape) for k, v in ref_runs[0].items()],
                   [(k, v.shape) for k, v in cand_runs[0].items()])
    # The candidate's outputs under the reference's names (matched by position) for Polygraphy's comparison.
    cand_runs = [dict(zip(ref_names, run.values())) for run in cand_runs]
    results = RunResults([("candidate", [IterationResult(r, runner_name="candidate") for r in cand_runs]),
                          ("reference", [IterationResult(r, runner_name="reference") for r in ref_runs])])
    accuracy = Comparator.compare_accuracy(results, compare_func=simple_compare_func(atol, rtol))

    outputs: dict[str, OutputComparison] = {}
    agreements = []
    for cand, ref in zip(cand_runs, ref_runs):
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
    return VerifyReport(reference=str(reference), candidate=str(candidate), images=len(tensors),
                        passed=worst >= min_agreement, within_tolerance=bool(accuracy), label_agreement=worst,
                        mean_label_agreement=float(np.mean(agreements)), outputs=list(outputs.values()),
                        atol=atol, rtol=rtol)
