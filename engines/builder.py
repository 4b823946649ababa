"""Apply a BuildPlan with the TensorRT Python API: parse, configure, build, save engine + manifest.

Runs only where TensorRT and the target GPU are present (Jetson engines are built on the Jetson).
Everything decided here comes from the plan; this module only translates it into API calls.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segrt.engines.manifest import Manifest, TensorSpec, sha256_bytes, write_manifest
from segrt.engines.model_info import read_metadata, sha256_file
from segrt.engines.plan import BuildPlan
from segrt.engines.versions import TrtVersion, detect_gpu, import_tensorrt
from segrt.runtime.backends.tensorrt import prepare_runtime
from segrt.runtime.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    MissingPluginError,
    ModelLoadError,
)
from segrt.runtime.sinks import write_bytes

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class BuildResult:
    engine: Path
    manifest: Path
    seconds: float
    timing_cache: Path | None
    tensorrt_version: str


class _Logger:
    """Collects TensorRT's messages so parse/build failures can quote them."""

    def __init__(self, verbose: bool) -> None:
        import tensorrt as trt

        self.messages: list[str] = []
        sink = self.messages
        threshold = trt.ILogger.Severity.INFO if verbose else trt.ILogger.Severity.WARNING

        class Collecting(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)  # required by the bindings for Python subclasses

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if severity <= threshold:
                    sink.append(f"[{severity.name}] {msg}")
                    if verbose:
                        print(f"tensorrt [{severity.name}] {msg}")

        self.logger = Collecting()

    def tail(self, n: int = 8) -> str:
        return "\n".join(self.messages[-n:])


def _progress_monitor(enabled: bool) -> trt.IProgressMonitor | None:
    """Shows TensorRT's build phases as rich progress bars (tactic timing is the long part)."""
    if not enabled:
        return None
    import tensorrt as trt

    from segrt.runtime.progress import make_progress

    progress = make_progress(transient=True)

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.tasks: dict[str, object] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            if not self.tasks:
                progress.start()
            self.tasks[phase_name] = progress.add_task(phase_name, total=num_steps, info=parent_phase or "")

        def step_complete(self, phase_name: str, step: int) -> bool:
            task = self.tasks.get(phase_name)
            if task is not None:
                progress.update(task, completed=step + 1)  # type: ignore[arg-type]
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            task = self.tasks.pop(phase_name, None)
            if task is not None:
                progress.remove_task(task)  # type: ignore[arg-type]
            if not self.tasks:
                progress.stop()

    return Monitor()


def parse_onnx(plan: BuildPlan, onnx_path: Path,
               logger: _Logger) -> tuple[trt.Builder, trt.INetworkDefinition, trt.OnnxParser]:
    import tensorrt as trt

    # Standard plugins (e.g. ScatterElements with a reduction) must be registered before parsing.
    trt.init_libnvinfer_plugins(logger.logger, "")
    builder = trt.Builder(logger.logger)
    flags = 0
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.logger)
    for name in plan.parser_flags:
        parser.set_flag(getattr(trt.OnnxParserFlag, name))
    # parse_from_file resolves external weights next to the ONNX file.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        lines = [f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}" for e in errors]
        text = "; ".join(lines) or logger.tail()
        if any("plugin" in line.lower() for line in lines):
            raise MissingPluginError(f"TensorRT cannot parse {onnx_path.name}: {text}")
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path.name}: {text} "
                             "(run `segrt build --check-only` for the static compatibility report)")
    return builder, network, parser


def register_plugins(plan: BuildPlan, running: TrtVersion) -> list[str]:
    """Register the segrt plugins a plugin-form ONNX calls (before parsing: the parser looks them up)."""
    ids = []
    for spec in plan.plugins:
        needed = TrtVersion.parse(spec["min_tensorrt"])
        if running < needed:
            raise ConfigError(f"the ONNX calls the TensorRT plugin {spec['id']} ({spec['kind']}), which needs TensorRT "
                              f">= {needed}; this machine runs {running}: use the function form here "
                              "(`segrt export --merge-ops function`)")
        if spec["id"] != "segrt::TokenMerge":
            raise ConfigError(f"the plan names a plugin segrt does not provide: {spec['id']}")
        from segrt.engines.token_merge_plugin import register

        ids.append(register())
    return ids


def _pin_fp32_layers(network: trt.INetworkDefinition, layer_types: list[str]) -> int:
    """Weakly typed FP16/INT8 builds: ask for FP32 in the numerically fragile layers."""
    import tensorrt as trt

    wanted = {getattr(trt.LayerType, name) for name in layer_types}
    floating = {trt.DataType.FLOAT, trt.DataType.HALF}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in wanted or layer.num_inputs == 0 or layer.get_input(0).dtype not in floating:
            continue  # e.g. an integer reduction on a shape: nothing to pin
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floating:
                layer.set_output_type(j, trt.DataType.FLOAT)
        pinned += 1
    return pinned


def configure(builder: trt.Builder, network: trt.INetworkDefinition, plan: BuildPlan,
              timing_cache: bytes | None, progress: bool) -> tuple[trt.IBuilderConfig, trt.IProgressMonitor | None]:
    """The builder config for ``plan``, and the progress monitor it uses (the caller keeps it alive:
    the config does not own the Python object)."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    config.builder_optimization_level = plan.optimization_level
    for name in plan.builder_flags:
        if not hasattr(trt.BuilderFlag, name):
            raise ConfigError(f"TensorRT {trt.__version__} has no builder flag {name}; the plan is for TensorRT "
                              f"{plan.tensorrt}")
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.fp32_layer_types:
        _pin_fp32_layers(network, plan.fp32_layer_types)
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.input, trt.Dims(p.min), trt.Dims(p.opt), trt.Dims(p.max))
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        if builder.num_DLA_cores <= plan.dla_core:
            raise ConfigError(f"plan asks for DLA core {plan.dla_core} but this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache = config.create_timing_cache(timing_cache or b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start a fresh one rather than fail.
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = _progress_monitor(progress)
    if monitor is not None:
        config.progress_monitor = monitor
    return config, monitor


def serialize_vc_plugins(parser: trt.OnnxParser, config: trt.IBuilderConfig) -> list[str]:
    """Version-compatible engines must carry the plugin libraries the parsed graph uses (e.g. the
    ScatterElements plugin of token-merged models), as trtexec --versionCompatible does."""
    libraries = list(parser.get_used_vc_plugin_libraries())
    if libraries:
        config.plugins_to_serialize = libraries
    return libraries


def dims_list(dims: trt.Dims) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _io_specs(network: trt.INetworkDefinition) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import tensorrt as trt

    def spec(tensor: trt.ITensor) -> TensorSpec:
        return TensorSpec(tensor.name, dims_list(tensor.shape), str(trt.nptype(tensor.dtype).__name__))

    inputs = [spec(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [spec(network.get_output(i)) for i in range(network.num_outputs)]
    return inputs, outputs


def build_engine(plan: BuildPlan, onnx_path: str | Path, out_dir: str | Path, *, progress: bool = True,
                 verbose: bool = False, segrt_version: str = "") -> BuildResult:
    """Build ``plan`` from ``onnx_path`` into ``out_dir/plan.engine`` with its manifest and timing cache."""
    import_tensorrt()
    import tensorrt as trt

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    running = TrtVersion.parse(trt.__version__)
    if running.major != plan.version.major:
        raise ConfigError(f"plan is for TensorRT {plan.tensorrt}; this machine runs {running}: re-plan for it")
    gpu = detect_gpu(0)
    if gpu is None:
        raise BackendUnavailableError("no CUDA GPU is visible to cuda-python; TensorRT engines are built on the GPU "
                                      "they run on")
    if plan.compute_capability is not None and list(gpu.compute_capability) != list(plan.compute_capability):
        raise ConfigError(f"plan targets compute capability {plan.compute_capability} ({plan.target}) but this GPU "
                          f"({gpu.name}) is {gpu.compute_capability}: build on the target device")

    logger = _Logger(verbose)
    register_plugins(plan, running)
    builder, network, parser = parse_onnx(plan, onnx_path, logger)
    cache_path = out_dir / plan.timing_cache if plan.timing_cache else None
    cached = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    config, _monitor = configure(builder, network, plan, cached, progress)
    if plan.version_compatible:
        serialize_vc_plugins(parser, config)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise BackendError(f"TensorRT failed to build {onnx_path.name}:\n{logger.tail()}")
    data = bytes(memoryview(serialized))

    engine_path = out_dir / plan.engine
    write_bytes(engine_path, data, "engine")
    if cache_path is not None:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())), "timing cache")

    import onnx

    meta = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    inputs, outputs = _io_specs(network)
    manifest = Manifest(
        engine_file=engine_path.name, engine_sha256=sha256_bytes(data), tensorrt_version=trt.__version__,
        target=plan.target, compute_capability=list(gpu.compute_capability), gpu_name=gpu.name,
        precision=plan.precision, inputs=inputs, outputs=outputs,
        metadata=json.loads(meta.to_json()) if meta else {}, onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        strongly_typed=plan.strongly_typed, hardware_compatibility=plan.hardware_compatibility,
        version_compatible=plan.version_compatible, dla_core=plan.dla_core, segrt_version=segrt_version,
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), plan=plan.to_dict(),
        plugins=list(plan.plugins))
    manifest_file = write_manifest(manifest, engine_path)
    return BuildResult(engine_path, manifest_file, seconds, cache_path, trt.__version__)


def adopt_engine(plan: BuildPlan, engine_path: str | Path, onnx_path: str | Path, segrt_version: str = "") -> Path:
    """Write the manifest for an engine built elsewhere from this plan (e.g. by the bundle's trtexec line).

    The engine is deserialised once here, on the device, to read its real I/O tensors."""
    import_tensorrt()
    import tensorrt as trt

    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    gpu = detect_gpu(0)
    if gpu is None:
        raise BackendUnavailableError("no CUDA GPU is visible to cuda-python")
    data = engine_path.read_bytes()
    logger = _Logger(False)
    trt.init_libnvinfer_plugins(logger.logger, "")
    runtime = trt.Runtime(logger.logger)
    prepare_runtime(runtime, plan.version_compatible, plan.dla_core)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelLoadError(f"TensorRT {trt.__version__} cannot deserialise {engine_path}: {logger.tail()}")
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        spec = TensorSpec(name, dims_list(engine.get_tensor_shape(name)),
                          str(trt.nptype(engine.get_tensor_dtype(name)).__name__))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    import onnx

    meta = read_metadata(onnx.load(str(onnx_path), load_external_data=False))
    manifest = Manifest(
        engine_file=engine_path.name, engine_sha256=sha256_bytes(data), tensorrt_version=trt.__version__,
        target=plan.target, compute_capability=list(gpu.compute_capability), gpu_name=gpu.name,
        precision=plan.precision, inputs=inputs, outputs=outputs, metadata=json.loads(meta.to_json()) if meta else {},
        onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path), strongly_typed=plan.strongly_typed,
        hardware_compatibility=plan.hardware_compatibility, version_compatible=plan.version_compatible,
        dla_core=plan.dla_core, segrt_version=segrt_version,
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), plan=plan.to_dict(),
        plugins=list(plan.plugins))
    return write_manifest(manifest, engine_path)
