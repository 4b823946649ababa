"""The build bundle: everything needed to build the engine on the device, made on any host.

    out/
      model.onnx              the ONNX the plan builds (copied; FP32 or Q/DQ INT8); with form "frame" (the
                              default of `segrt build`) wrapped first: uint8 frame in, label mask out
      model.fp16.onnx         only when a plan is strongly typed FP16 (TensorRT 11)
      plan.json               request + one BuildPlan per TensorRT major version the target runs
      compatibility.txt/json  the static TensorRT compatibility report of each planned ONNX
      build_engine.sh         `segrt build --from-plan plan.json` (on the device)
      build_engine_trtexec.sh the equivalent trtexec command, then `segrt build --adopt` for the manifest
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from segrt.engines.compat import CompatReport, check_model
from segrt.engines.model_info import describe, load_onnx, sha256_file
from segrt.engines.plan import FORMS, BuildPlan, BuildRequest, PlanFile, make_plan, plan_versions, variant_file
from segrt.engines.targets import Target
from segrt.export.passes.cpu_form import to_portable_ops
from segrt.runtime.errors import ConfigError, ExportError
from segrt.runtime.sinks import prepare_folder, write_bytes, write_text, writing

PLAN_FILE = "plan.json"


@dataclass
class Bundle:
    directory: Path
    plan_file: PlanFile
    reports: list[CompatReport]
    files: list[Path] = field(default_factory=list)
    fp16_error: tuple[float, float] | None = None  # (max relative error, label agreement) of the FP16 ONNX

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)

    @property
    def clean(self) -> bool:
        return all(r.clean for r in self.reports)


# ONNX operators whose TensorRT layers have the LayerType names the plan pins to FP32.
_OPS_OF_LAYER_TYPE = {
    "NORMALIZATION": ("LayerNormalization", "GroupNormalization", "InstanceNormalization"),
    "SOFTMAX": ("Softmax", "LogSoftmax"),
    "REDUCE": ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"),
}


def fp32_layer_names(model: onnx.ModelProto, layer_types: Sequence[str]) -> tuple[list[str], int]:
    """Names of the main-graph nodes whose layers ``segrt build`` pins to FP32 (the ONNX parser names a
    node's layer after the node), and how many such nodes cannot be named on trtexec's command line
    (unnamed, inside a model-local function, or with ``,``/``:`` in the name)."""
    ops = {op for t in layer_types for op in _OPS_OF_LAYER_TYPE.get(t, ())}
    names = [n.name for n in model.graph.node if n.op_type in ops]
    usable = [n for n in names if n and not set(n) & {",", ":"}]
    in_functions = sum(1 for f in model.functions for n in f.node if n.op_type in ops)
    return usable, len(names) - len(usable) + in_functions


def trtexec_command(plan: BuildPlan, fp32_layers: Sequence[str] = ()) -> str:
    """The trtexec equivalent of ``plan``. The FP32 pins of a weakly typed FP16/INT8 build become
    ``--precisionConstraints=prefer --layerPrecisions=NAME:fp32 --layerOutputTypes=NAME:fp32`` for the
    ``fp32_layers`` (node names, see :func:`fp32_layer_names`), matching PREFER_PRECISION_CONSTRAINTS."""
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}",
            f"--memPoolSize=workspace:{plan.workspace_mb}M", f"--builderOptimizationLevel={plan.optimization_level}"]
    flags = set(plan.builder_flags)
    if plan.strongly_typed:
        args.append("--stronglyTyped")
    if "FP16" in flags:
        args.append("--fp16")
    if "INT8" in flags:
        args.append("--int8")
    if plan.fp32_layer_types and fp32_layers:
        pins = ",".join(f"{name}:fp32" for name in fp32_layers)
        args += ["--precisionConstraints=prefer", f"--layerPrecisions={pins}", f"--layerOutputTypes={pins}"]
    if plan.dla_core is not None:
        args += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    for p in plan.profiles:
        for key, shape in (("minShapes", p.min), ("optShapes", p.opt), ("maxShapes", p.max)):
            args.append(f"--{key}={p.input}:{'x'.join(map(str, shape))}")
    if plan.hardware_compatibility == "ampere_plus":
        args.append("--hardwareCompatibilityLevel=ampere+")
    if plan.version_compatible:
        args.append("--versionCompatible")
    if plan.timing_cache:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


def _segrt_script() -> str:
    return """#!/usr/bin/env bash
# Build the TensorRT engine on the device this bundle targets (TensorRT + GPU needed).
# Picks the plan for the installed TensorRT, checks the ONNX hash, builds, writes the engine manifest.
set -euo pipefail
cd "$(dirname "$0")"
exec segrt build --from-plan plan.json "$@"
"""


def _trtexec_script(plans: list[BuildPlan], pins: dict[str, tuple[list[str], int]]) -> str:
    lines = ["#!/usr/bin/env bash",
             "# The same build with trtexec (no segrt needed to build). In TensorRT 10 FP16/INT8 builds the",
             "# LayerNorm/Softmax/Reduce layers are pinned to FP32 by node name, as segrt build pins them by type.",
             "# segrt loads an engine only with its manifest, so register the result with the last command.",
             "set -euo pipefail", 'cd "$(dirname "$0")"',
             "# JetPack installs trtexec outside PATH.",
             'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
             'TRT_MAJOR="${TRT_MAJOR:-$(python3 -c "import tensorrt; print(tensorrt.__version__.split(\'.\')[0])")}"',
             'case "$TRT_MAJOR" in']
    for plan in plans:
        names, unpinned = pins.get(plan.onnx, ([], 0)) if plan.fp32_layer_types else ([], 0)
        if unpinned:
            lines.append(f"  # {unpinned} layers segrt build would pin to FP32 cannot be named here (in local "
                         "functions or unnamed): prefer build_engine.sh")
        lines += [f"  {plan.version.major})  # TensorRT {plan.tensorrt} plan",
                  f"    \"$TRTEXEC\" {trtexec_command(plan, names).removeprefix('trtexec ')}",
                  f"    segrt build --from-plan plan.json --adopt {shlex.quote(plan.engine)} ;;"]
    lines += ['  *) echo "no plan for TensorRT major $TRT_MAJOR in plan.json" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def logits_network(model: onnx.ModelProto) -> onnx.ModelProto:
    """The logits-form network of ``model`` (itself, or the network inside a frame-form graph), with the ops
    written for ONNX Runtime's CPU provider in their portable forms (exact; :mod:`segrt.export.passes.cpu_form`):
    LayerNormalization, which TensorRT fuses and the FP16/INT8 plans keep in FP32, and ScatterElements sums."""
    from segrt.export.passes.frame_graph import is_frame_form, network_of

    return to_portable_ops(network_of(model) if is_frame_form(model) else model)


def frame_form(network: onnx.ModelProto, frame_size: Sequence[int] | None) -> onnx.ModelProto:
    """``network`` (logits form) wrapped for TensorRT: post "dense" (Resize + ArgMax, which TensorRT runs as
    TopK k=1), int32 masks past 256 classes (TensorRT has no UINT16)."""
    from segrt.export.passes.frame_graph import to_frame_form

    size = (int(frame_size[0]), int(frame_size[1])) if frame_size else None
    try:
        return to_frame_form(network, frame_size=size, post="dense", mask_int32=True)
    except ExportError as exc:
        raise ConfigError(f"cannot wrap the model into the frame form: {exc}; build it as it is with --form logits") \
            from exc


def _write_model(model: onnx.ModelProto, path: Path) -> Path:
    return write_bytes(path, model.SerializeToString(), "ONNX model")


def tensorrt_onnx(model: onnx.ModelProto, form: str, frame_size: Sequence[int] | None
                  ) -> tuple[onnx.ModelProto, onnx.ModelProto | None]:
    """What a bundle plans, checks and builds from ``model``: the frame form of its portable network (and that
    network), or in logits form the model with portable ops (and None); ``model`` itself when nothing changes."""
    if form == "frame":
        network = logits_network(model)
        return frame_form(network, frame_size), network
    return to_portable_ops(model), None


def write_bundle(source: str | Path, out_dir: str | Path, target: Target, request: BuildRequest, *,
                 frames: Sequence[np.ndarray] | None = None) -> Bundle:
    """Plan for every TensorRT version the target runs, prepare the ONNX files, check them, write the bundle.

    With ``request.form == "frame"`` the bundle's ONNX files are the frame form of ``source``'s network
    (a frame-form ``source`` is unwrapped and re-wrapped with post "dense"); plans and checks are made on
    them. Raises ConfigError for requests that cannot work; returns the bundle with its compatibility
    reports (the caller decides what to do about errors in them)."""
    source, out = Path(source), Path(out_dir)
    if request.form not in FORMS:
        raise ConfigError(f"unknown form {request.form!r}; expected one of {', '.join(FORMS)}")
    stem = source.name.removesuffix(".onnx")
    for suffix in (".fp32", ".fp16", ".int8", ".frame", ".logits"):  # export names; the bundle adds its own
        stem = stem.removesuffix(suffix)
    wrapped_from = None
    original = load_onnx(source)
    rewritten, network = tensorrt_onnx(original, request.form, request.frame_size)
    if rewritten is not original:  # the frame form, or a logits file written for ONNX Runtime's CPU provider
        target_path = out / f"{stem}.onnx"
        if target_path.exists() and source.resolve() == target_path.resolve():
            raise ConfigError(f"{source} is where the bundle writes its {request.form}-form ONNX; choose another "
                              "-o folder")
        prepare_folder(out, "bundle folder")
        wrapped_from = {"source": source.name, "sha256": sha256_file(source)}
        source = _write_model(rewritten, target_path)
    model, info = rewritten, describe(rewritten, source)  # the file at ``source`` is this model
    plans = [make_plan(target, info, v, request, stem=stem) for v in plan_versions(target, request)]

    prepare_folder(out, "bundle folder")
    files: list[Path] = []
    plain = out / variant_file(stem, info.variant)
    if source.resolve() != plain.resolve():
        with writing(plain, "model copy"):
            shutil.copyfile(source, plain)
    files.append(plain)
    fp16_error = None
    if any(p.onnx_variant == "fp16" and not info.float16 for p in plans):
        fp16_error = _fp16_variant(source, network, out / variant_file(stem, "fp16"), request, frames, files)

    reports = []
    for plan in plans:
        onnx_model = model if plan.onnx == plain.name else load_onnx(out / plan.onnx)
        reports.append(check_model(onnx_model, target, plan.version, plan.precision, plan.dla_core is not None,
                                   model_name=plan.onnx))
    plan_file = PlanFile(request=request, plans=plans, model={
        "source": source.name, "sha256": info.sha256, "form": request.form, "wrapped_from": wrapped_from,
        "inputs": [t.to_dict() for t in info.inputs], "outputs": [t.to_dict() for t in info.outputs],
        "files": {f.name: sha256_file(f) for f in files},
    })
    plan_file.save(out / PLAN_FILE)
    write_text(out / "compatibility.txt", "".join(r.to_text() for r in reports), "compatibility report")
    write_text(out / "compatibility.json", json.dumps([r.to_dict() for r in reports], indent=2) + "\n",
               "compatibility report")
    pins = {plan.onnx: fp32_layer_names(model if plan.onnx == plain.name else load_onnx(out / plan.onnx),
                                        plan.fp32_layer_types) for plan in plans if plan.fp32_layer_types}
    for name, text in (("build_engine.sh", _segrt_script()), ("build_engine_trtexec.sh", _trtexec_script(plans, pins))):
        script = write_text(out / name, text, "build script")
        with writing(script, "build script"):
            script.chmod(0o755)
    files += [out / n for n in (PLAN_FILE, "compatibility.txt", "compatibility.json", "build_engine.sh",
                                "build_engine_trtexec.sh")]
    return Bundle(out, plan_file, reports, files, fp16_error)


def _fp16_variant(source: Path, network: onnx.ModelProto | None, path: Path, request: BuildRequest,
                  frames: Sequence[np.ndarray] | None, files: list[Path]) -> tuple[float, float]:
    """The FP16 ONNX of a strongly typed plan at ``path``: the FP16 conversion of the network, verified against
    FP32 on real frames, then wrapped like the FP32 file when the bundle is frame form."""
    from segrt.export.passes.fp16 import export_fp16

    if network is None:
        result = export_fp16(source, path, frames=frames)
        files.append(result.path)
        return result.max_rel_error, result.label_agreement
    scratch = path.with_name(f".{path.stem}.network.onnx")
    try:
        _write_model(network, scratch)
        result = export_fp16(scratch, path, frames=frames)
        _write_model(frame_form(load_onnx(path), request.frame_size), path)
    finally:
        scratch.unlink(missing_ok=True)
    files.append(path)
    return result.max_rel_error, result.label_agreement


def verify_bundle_file(plan_dir: Path, name: str, plan_file: PlanFile) -> Path:
    """The prepared ONNX ``name`` of a bundle, after checking it is the file the plan was made with."""
    path = plan_dir / name
    expected = plan_file.model.get("files", {}).get(name)
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the bundle")
    if expected and sha256_file(path) != expected:
        raise ConfigError(f"{path} changed after the bundle was written (sha256 mismatch); re-run segrt build on the "
                          "host")
    return path
