"""The build plan: every decision about how to build an engine, computed without TensorRT.

A plan is pure data (JSON in the build bundle) made from three things: the target, the model and the
TensorRT version that will build it. The builder only applies it, so each decision is unit-tested here:

- TensorRT 10: a weakly typed network from the FP32 ONNX; FP16 is the FP16 builder flag, with
  normalisation, softmax and reduction layers pinned to FP32 (precision constraints) because they
  overflow in FP16 in transformer segmentation models.
- TensorRT 11: no precision flags exist. Every network is strongly typed, so FP16 means building from
  an FP16 ONNX that already keeps those layers in FP32 (``segrt.export.passes.fp16``).
- INT8 is explicit quantization in both: a Q/DQ ONNX (``segrt export --precision int8 --int8-form qdq``). TensorRT 10
  needs the INT8 flag (plus FP16 for the unquantized layers); TensorRT 11 reads the types from the graph.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from segrt.engines.model_info import ModelInfo, TensorInfo
from segrt.engines.plugin_rules import check_plugin_precision, plan_entries, plugin_version
from segrt.engines.targets import PRECISIONS, Target
from segrt.engines.trt_table import JETSON_RANGES_BY_MAJOR, api_available, jetson_supported
from segrt.engines.versions import TrtVersion
from segrt.runtime.errors import ConfigError
from segrt.runtime.sinks import write_text

PLAN_SCHEMA = 1
# TensorRT LayerType names kept in FP32 in weakly typed FP16/INT8 builds (TensorRT 10).
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
DEFAULT_MIN_HW = (256, 256)
DEFAULT_MAX_HW = (1024, 1024)
# Camera frames of a frame-form model with any frame size: VGA up to 1080p, tuned for 720p.
DEFAULT_FRAME_HW = ((240, 320), (720, 1280), (1080, 1920))
FORMS = ("frame", "logits")


@dataclass
class ShapeProfile:
    """One optimization profile entry: the range of shapes a dynamic input accepts."""

    input: str
    min: list[int]
    opt: list[int]
    max: list[int]

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass
class BuildRequest:
    """What the user asked for; anything left None comes from the target."""

    target: str
    precision: str | None = None
    dla_core: int | None = None
    workspace_mb: int | None = None
    # input name -> (min, opt, max) full shapes, for models exported with dynamic sizes.
    shapes: dict[str, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    max_batch: int = 1  # engines sized for this many cameras: the default profile's batch opt = max = max_batch
    timing_cache: str | None = "timing.cache"
    optimization_level: int = 3
    version_compatible: bool = False
    tensorrt: str | None = None  # plan for this version instead of the ones the target expects
    # "frame": the bundle wraps the ONNX into the frame form (uint8 frame in, mask out; frame_graph, post
    # "dense") before planning and checking; "logits": built as given. Plans saved before it were logits.
    form: str = "logits"
    frame_size: list[int] | None = None  # [H, W] of a fixed camera size for the frame form; None: any size


@dataclass
class BuildPlan:
    target: str
    tensorrt: str
    precision: str
    strongly_typed: bool
    onnx: str  # file the builder parses, relative to the plan file
    onnx_variant: str  # fp32 | fp16 | qdq
    engine: str  # engine file name, relative to the plan file
    builder_flags: list[str] = field(default_factory=list)  # tensorrt.BuilderFlag names
    parser_flags: list[str] = field(default_factory=list)  # tensorrt.OnnxParserFlag names
    fp32_layer_types: list[str] = field(default_factory=list)  # tensorrt.LayerType names pinned to FP32
    profiles: list[ShapeProfile] = field(default_factory=list)
    dla_core: int | None = None
    workspace_mb: int = 1024
    timing_cache: str | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    optimization_level: int = 3
    compute_capability: list[int] | None = None  # None: whatever GPU builds it (desktop)
    notes: list[str] = field(default_factory=list)
    form: str = "logits"  # of the ONNX the plan builds: "frame" (uint8 frame -> mask) or "logits"
    frame_size: list[int] | None = None  # fixed camera size of a frame-form engine, None: the profile's range
    max_batch: int = 1
    plugins: list[dict] = field(default_factory=list)  # TensorRT plugins the engine embeds (plugin_rules)
    schema: int = PLAN_SCHEMA

    @property
    def version(self) -> TrtVersion:
        return TrtVersion.parse(self.tensorrt)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> BuildPlan:
        if raw.get("schema") != PLAN_SCHEMA:
            raise ConfigError(f"build plan schema {raw.get('schema')!r} is not {PLAN_SCHEMA}: rebuild the bundle with "
                              "this segrt")
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in raw.items() if k in known}
        data["profiles"] = [ShapeProfile(**p) for p in data.get("profiles", [])]
        return cls(**data)


def variant_file(stem: str, variant: str) -> str:
    return f"{stem}.fp16.onnx" if variant == "fp16" else f"{stem}.onnx"


def _choose_precision(target: Target, info: ModelInfo, requested: str | None) -> tuple[str, list[str]]:
    notes = []
    precision = requested
    if precision is None:
        precision = "int8" if info.quantized else "fp16" if info.float16 else target.default_precision
        if info.quantized:
            notes.append("model has Q/DQ nodes: building INT8")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if info.quantized and precision != "int8":
        raise ConfigError(f"{info.path.name} is quantized (QuantizeLinear/DequantizeLinear nodes); build it with "
                          "--precision int8, or pass the unquantized ONNX")
    if precision == "int8" and not info.quantized:
        raise ConfigError(f"--precision int8 needs a Q/DQ ONNX: make one with `segrt export MODEL --precision int8 "
                          f"--int8-form qdq --calib DIR`; {info.path.name} has no QuantizeLinear/DequantizeLinear "
                          "nodes "
                          "(implicit INT8 calibration is deprecated in TensorRT 10 and gone in 11)")
    if info.float16 and precision == "fp32":
        raise ConfigError(f"{info.path.name} already computes in FP16; build the FP32 ONNX for --precision fp32")
    return precision, notes


def _profiles(info: ModelInfo, request: BuildRequest) -> list[ShapeProfile]:
    profiles = []
    unknown = set(request.shapes) - {t.name for t in info.inputs}
    if unknown:
        raise ConfigError(f"shapes given for unknown inputs {sorted(unknown)}; the model's inputs are "
                          f"{[t.name for t in info.inputs]}")
    for tensor in info.inputs:
        if tensor.name in request.shapes:
            lo, opt, hi = (list(map(int, s)) for s in request.shapes[tensor.name])
            _check_profile(tensor, lo, opt, hi)
            profiles.append(ShapeProfile(tensor.name, lo, opt, hi))
        elif tensor.is_dynamic:
            profiles.append(_default_profile(tensor, info, request.max_batch))
        if request.max_batch > 1 and tensor.shape and isinstance(tensor.shape[0], int) and tensor.shape[0] > 0:
            raise ConfigError(f"--max-batch {request.max_batch}: input {tensor.name} has a fixed batch of "
                              f"{tensor.shape[0]} in the ONNX; export with a dynamic batch (segrt export --dynamic)")
    return profiles


def is_frame_input(tensor: TensorInfo) -> bool:
    """The frame form's input: uint8 (N, H, W, 3)."""
    return tensor.dtype == "uint8" and len(tensor.shape) == 4 and tensor.shape[3] in (3, None, "3")


def _default_profile(tensor: TensorInfo, info: ModelInfo, max_batch: int) -> ShapeProfile:
    """(N, 3, H, W) image input: sides 256..1024 around the model's own size; a frame form's (N, H, W, 3)
    frame: camera sizes 240x320..1080x1920, tuned for 1280x720. Batch 1..max_batch, tuned for max_batch
    (engines sized for a camera count run all cameras in one batch)."""
    if len(tensor.shape) != 4:
        raise ConfigError(f"input {tensor.name} has dynamic shape {tensor.shape}; give --shapes for it")
    size = (info.metadata.input_size if info.metadata and info.metadata.input_size else None) or (512, 512)
    frame = is_frame_input(tensor)
    ranges: list[tuple[int, int, int]] = []
    for axis, dim in enumerate(tensor.shape):
        if isinstance(dim, int) and dim > 0:
            ranges.append((dim, dim, dim))
        elif axis == 0:
            ranges.append((1, max(1, max_batch), max(1, max_batch)))
        elif axis == (3 if frame else 1):
            ranges.append((3, 3, 3))
        elif frame:
            first, tuned, last = (hw[axis - 1] for hw in DEFAULT_FRAME_HW)
            ranges.append((first, tuned, last))
        else:
            i = axis - 2
            ranges.append((DEFAULT_MIN_HW[i], size[i], max(DEFAULT_MAX_HW[i], size[i])))
    lo, opt, hi = (list(r) for r in zip(*ranges))
    return ShapeProfile(tensor.name, lo, opt, hi)


def _check_profile(tensor: TensorInfo, lo: list[int], opt: list[int], hi: list[int]) -> None:
    if not len(lo) == len(opt) == len(hi) == len(tensor.shape):
        raise ConfigError(f"shapes for {tensor.name} must have {len(tensor.shape)} dimensions like {tensor.shape}")
    for axis, dim in enumerate(tensor.shape):
        if not lo[axis] <= opt[axis] <= hi[axis] or lo[axis] < 1:
            raise ConfigError(f"{tensor.name} axis {axis}: need 1 <= min <= opt <= max, got {lo[axis]}, {opt[axis]}, "
                              f"{hi[axis]}")
        if isinstance(dim, int) and dim > 0 and not lo[axis] == hi[axis] == dim:
            raise ConfigError(f"{tensor.name} axis {axis} is fixed at {dim} in the ONNX; the profile asks "
                              f"{lo[axis]}..{hi[axis]}")


def make_plan(target: Target, info: ModelInfo, version: TrtVersion | str, request: BuildRequest,
              stem: str = "model") -> BuildPlan:
    """Decide how ``info`` is built for ``target`` by TensorRT ``version``. Raises ConfigError on requests
    that cannot work (INT8 without Q/DQ, DLA on a target without DLA, ...)."""
    version = TrtVersion.parse(version)
    if target.jetson and not jetson_supported(version):
        raise ConfigError(f"TensorRT {version} does not support JetPack: TensorRT 11 runs on Jetson from 11.4.1 "
                          f"(JetPack 7.2.2+, AGX Orin and Thor); plan {target.name} for 10.x or >= 11.4.1")
    planned = version
    version = plugin_version(info, target, version, request.tensorrt is not None)  # plugin form: refuse < 10.9
    precision, notes = _choose_precision(target, info, request.precision)
    plan = BuildPlan(target=target.name, tensorrt=str(version), precision=precision, strongly_typed=False,
                     onnx=variant_file(stem, info.variant), onnx_variant=info.variant,
                     engine=f"{stem}.{target.name}.{precision}.engine", notes=notes,
                     workspace_mb=request.workspace_mb or target.workspace_mb,
                     timing_cache=request.timing_cache, optimization_level=request.optimization_level,
                     hardware_compatibility=target.hardware_compatibility,
                     version_compatible=request.version_compatible,
                     compute_capability=list(target.compute_capability) if target.compute_capability else None)
    if info.metadata is not None and info.metadata.form == "frame":
        size = info.metadata.frame_size
        plan.form, plan.frame_size = "frame", list(size) if size else None
    plan.max_batch = request.max_batch
    if not 0 <= plan.optimization_level <= 5:
        raise ConfigError(f"builder optimization level {plan.optimization_level} is outside 0..5")

    if api_available("BuilderFlag.FP16", version) and not info.float16:
        # TensorRT 10: weak typing, precision from builder flags.
        if precision == "fp16":
            plan.builder_flags.append("FP16")
        elif precision == "int8":
            plan.builder_flags += ["INT8", "FP16"]  # FP16 for the layers left unquantized
        if precision != "fp32":
            plan.fp32_layer_types = list(FP32_LAYER_TYPES)
            plan.builder_flags.append("PREFER_PRECISION_CONSTRAINTS")
    else:
        # TensorRT 11 (or an ONNX that is already FP16): the graph's own types decide.
        plan.strongly_typed = True
        if precision == "int8":
            plan.notes.append("strongly typed INT8: layers without Q/DQ stay FP32 unless the graph is converted "
                              "first (NVIDIA: ModelOpt AutoCast to FP16)")
        if precision == "fp16" and not info.float16:
            plan.onnx_variant, plan.onnx = "fp16", variant_file(stem, "fp16")
            plan.notes.append("strongly typed: built from an FP16 ONNX that keeps LayerNorm, Softmax and reductions "
                              "in FP32")

    check_plugin_precision(info, plan.strongly_typed, plan.onnx_variant)
    plan.plugins = plan_entries(info)
    if version != planned:
        plan.notes.append(f"plugin form ({', '.join(p['id'] for p in plan.plugins)}): planned for TensorRT {version}, "
                          "the first with ahead-of-time plugins")
    plan.profiles = _profiles(info, request)

    if request.dla_core is not None:
        _plan_dla(plan, target, info, request.dla_core)

    if target.hardware_compatibility != "none" or request.version_compatible:
        if target.jetson:
            raise ConfigError(f"{target.name}: hardware/version-compatible engines are not supported on Jetson; "
                              "build on the device")
        plan.parser_flags.append("NATIVE_INSTANCENORM")  # required by both compatibility modes
    if request.version_compatible:
        plan.builder_flags.append("VERSION_COMPATIBLE")
    if target.hardware_compatibility != "none":
        plan.notes.append("hardware-compatible engine: runs on any GPU from Ampere on, without cuDNN/cuBLAS tactics")
    return plan


def _plan_dla(plan: BuildPlan, target: Target, info: ModelInfo, core: int) -> None:
    if target.dla_cores == 0:
        raise ConfigError(f"{target.name} has no DLA; drop --dla")
    if not 0 <= core < target.dla_cores:
        raise ConfigError(f"{target.name} has DLA cores 0..{target.dla_cores - 1}; got --dla-core {core}")
    if plan.precision == "fp32":
        raise ConfigError("DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla")
    dynamic = [p.input for p in plan.profiles if not p.is_static]
    if dynamic:
        raise ConfigError(f"DLA does not support dynamic shapes (inputs {dynamic}); export at a fixed --size "
                          "or give equal min/opt/max shapes")
    plan.dla_core = core
    plan.builder_flags.append("GPU_FALLBACK")  # attention, LayerNorm and Gather cannot run on DLA
    plan.notes.append(f"DLA core {core} with GPU fallback: transformer blocks will run on the GPU")


def plan_versions(target: Target, request: BuildRequest) -> list[TrtVersion]:
    """The TensorRT versions to plan for: the requested one, else one per major version the target expects
    (plans within a major version are identical)."""
    if request.tensorrt:
        return [TrtVersion.parse(request.tensorrt)]
    seen: dict[int, TrtVersion] = {}
    for text in target.tensorrt:
        v = TrtVersion.parse(text)
        if target.jetson:  # e.g. "11" on a Jetson means the first 11.x that supports JetPack
            first = JETSON_RANGES_BY_MAJOR.get(v.major, ((v, v),))[0][0]
            v = max(v, first)
        seen.setdefault(v.major, v)
    return list(seen.values())


@dataclass
class PlanFile:
    """``plan.json`` of a build bundle: the request and one plan per TensorRT major version."""

    request: BuildRequest
    plans: list[BuildPlan]
    model: dict = field(default_factory=dict)  # source ONNX name, sha256, inputs/outputs
    schema: int = PLAN_SCHEMA

    def for_version(self, running: TrtVersion) -> BuildPlan:
        same_major = [p for p in self.plans if p.version.major == running.major]
        if not same_major:
            have = ", ".join(p.tensorrt for p in self.plans)
            raise ConfigError(f"this bundle was planned for TensorRT {have}, but this machine runs {running}; "
                              f"re-run `segrt build` on the host with --tensorrt {running.major}.{running.minor}")
        # The closest planned version not newer than the running one, else the oldest planned.
        older = [p for p in same_major if p.version <= running]
        return max(older, key=lambda p: p.version) if older else min(same_major, key=lambda p: p.version)

    def save(self, path: str | Path) -> None:
        data = {"schema": self.schema, "model": self.model, "request": dataclasses.asdict(self.request),
                "plans": [p.to_dict() for p in self.plans]}
        write_text(path, json.dumps(data, indent=2) + "\n", "build plan")

    @classmethod
    def load(cls, path: str | Path) -> PlanFile:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read build plan {path}: {exc}") from exc
        if raw.get("schema") != PLAN_SCHEMA:
            raise ConfigError(f"{path}: plan schema {raw.get('schema')!r} is not {PLAN_SCHEMA}; rebuild the bundle")
        req = dict(raw["request"])
        req["shapes"] = {k: tuple(v) for k, v in req.get("shapes", {}).items()}
        return cls(request=BuildRequest(**req), plans=[BuildPlan.from_dict(p) for p in raw["plans"]],
                   model=raw.get("model", {}))
