"""`segrt build MODEL.onnx --target T`: TensorRT engine, or a bundle that builds it on the device."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from segrt.commands._args import (
    at_least_one,
    choice,
    existing_file,
    in_range,
    model_spec,
    non_negative,
    output_folder,
    parse_size,
)


def _shape(text: str | None, option: str, frame: bool = False, batch: int = 1) -> list[int] | None:
    """NxCxHxW (a frame form's input: NxHxWx3), or HxW for ``batch`` frames of 3 channels; H and W bounded like
    every model input size."""
    if not text:
        return None
    from segrt.runtime.errors import ConfigError

    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 4) or min(parts) < 1:
        raise ConfigError(f"{option} {text!r}: expected {'NxHxWx3' if frame else 'NxCxHxW'} or HxW of positive "
                          "integers")
    if frame and len(parts) == 4 and parts[3] != 3:
        raise ConfigError(f"{option} {text!r}: the frame form's input is NxHxWx3 (or give HxW); NxCxHxW shapes are "
                          "for --form logits")
    hw = parts[1:3] if frame and len(parts) == 4 else parts[-2:]
    h, w = parse_size(f"{hw[0]}x{hw[1]}", option)
    if len(parts) == 2:
        return [batch, h, w, 3] if frame else [batch, 3, h, w]
    return [parts[0], h, w, parts[3]] if frame else [*parts[:2], h, w]


def _model_to_check(source: Path, form: str, frame_size: list[int] | None):
    """The ONNX the bundle would plan and check (:func:`segrt.engines.bundle.tensorrt_onnx`)."""
    from segrt.engines.bundle import tensorrt_onnx
    from segrt.engines.model_info import describe, load_onnx

    model, _ = tensorrt_onnx(load_onnx(source), form, frame_size)
    return model, describe(model, source)


def _print_reports(console: Console, reports) -> None:
    from rich.markup import escape

    for report in reports:
        style = "green" if report.clean else "yellow" if report.ok else "red"
        console.print(f"[{style}]{escape(report.summary())}[/]")
        for issue in report.issues:
            color = {"error": "red", "warning": "yellow"}.get(issue.severity, "dim")
            console.print(f"  [{color}]{escape(str(issue))}[/]", highlight=False)


def _from_plan(console: Console, plan_path: Path, adopt: Path | None, verbose: bool) -> None:
    from segrt import __version__
    from segrt.engines.builder import adopt_engine, build_engine
    from segrt.engines.bundle import verify_bundle_file
    from segrt.engines.plan import PlanFile
    from segrt.engines.versions import detect_tensorrt
    from segrt.runtime.errors import BackendUnavailableError

    plan_file = PlanFile.load(plan_path)
    running = detect_tensorrt()
    if running is None:
        raise BackendUnavailableError("`segrt build --from-plan` runs on the device and needs TensorRT "
                                      "(JetPack ships it: python3 -c 'import tensorrt')")
    plan = plan_file.for_version(running)
    onnx_path = verify_bundle_file(plan_path.parent, plan.onnx, plan_file)
    if adopt is not None:
        engine = adopt if adopt.is_absolute() or adopt.exists() else plan_path.parent / adopt
        manifest = adopt_engine(plan, engine, onnx_path, segrt_version=__version__)
        console.print(f"[green]wrote[/] {manifest} for {engine}")
        return
    console.print(f"building {plan.engine} with TensorRT {running} ({plan.precision}, "
                  f"{'strongly typed' if plan.strongly_typed else 'flags ' + ','.join(plan.builder_flags) or 'fp32'})")
    result = build_engine(plan, onnx_path, plan_path.parent, verbose=verbose, segrt_version=__version__)
    console.print(f"[green]wrote[/] {result.engine} and {result.manifest.name} in {result.seconds:.0f} s")


def build_command(
    model: str = typer.Argument(None, help="ONNX file or bundled model name (omit with --from-plan)",
                                callback=model_spec),
    target: str = typer.Option("desktop", "--target", "-t", help="build target (see `segrt targets`)"),
    precision: str = typer.Option(None, "--precision", "-p", callback=choice("fp32", "fp16", "int8"),
                                  help="fp32, fp16 or int8 (int8 needs a Q/DQ ONNX); default: the target's"),
    output: Path = typer.Option(None, "-o", "--output", help="bundle/engine folder (default: build/<model>-<target>)",
                                callback=output_folder),
    dla_core: int = typer.Option(None, "--dla-core", help="run on this DLA core, with GPU fallback (Jetson AGX/NX)",
                                 callback=non_negative),
    workspace: int = typer.Option(None, "--workspace", help="builder workspace in MB (default: the target's)",
                                  callback=at_least_one),
    min_shape: str = typer.Option(None, "--min-shape", help="dynamic models: smallest input, NxCxHxW or HxW"),
    opt_shape: str = typer.Option(None, "--opt-shape", help="dynamic models: the shape to tune for"),
    max_shape: str = typer.Option(None, "--max-shape", help="dynamic models: largest input"),
    form: str = typer.Option("frame", "--form", callback=choice("frame", "logits"),
                             help="frame: the engine takes the camera's uint8 BGR frame and returns the label mask "
                                  "(resize, normalisation, upsampling and argmax inside); logits: the ONNX as it is"),
    frame_size: str = typer.Option(None, "--frame-size", help="--form frame: the cameras' fixed size HxW (default: "
                                   "any size, profile 240x320..1080x1920 tuned for 720x1280)"),
    max_batch: int = typer.Option(1, "--max-batch", help="engines sized for this many cameras: batch 1..N of the "
                                  "profile, tuned for N (needs an ONNX with a dynamic batch)", callback=at_least_one),
    opt_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimization level 0..5",
                                  callback=in_range(0, 5)),
    version_compatible: bool = typer.Option(False, "--version-compatible",
                                            help="desktop: engine also loads in newer TensorRT of the same major"),
    tensorrt: str = typer.Option(None, "--tensorrt", help="plan for this TensorRT version instead of the target's"),
    check_only: bool = typer.Option(False, "--check-only", help="only run the static compatibility check"),
    force: bool = typer.Option(False, "--force", help="write the bundle even if the compatibility check finds errors"),
    no_engine: bool = typer.Option(False, "--no-engine",
                                   help="write the bundle only, even where an engine could be built"),
    from_plan: Path = typer.Option(None, "--from-plan", help="on the device: build from a bundle's plan.json",
                                   callback=existing_file),
    adopt: Path = typer.Option(None, "--adopt",
                               help="with --from-plan: write the manifest for an engine built by trtexec"),
    verbose: bool = typer.Option(False, "--verbose", help="show TensorRT's log"),
) -> None:
    """Build a TensorRT engine for a target, or (without TensorRT or the target GPU here) a bundle that builds it
    on the device: prepared ONNX, build plan, compatibility report, build scripts."""
    from segrt.runtime.errors import ConfigError

    console = Console()
    if from_plan is not None:
        _from_plan(console, from_plan, adopt, verbose)
        return
    if model is None:
        raise ConfigError("give an ONNX model (or --from-plan plan.json on the device)")

    from segrt.engines.bundle import write_bundle
    from segrt.engines.compat import check_model
    from segrt.engines.model_info import inspect_model
    from segrt.engines.plan import BuildRequest, make_plan, plan_versions
    from segrt.engines.targets import get_target
    from segrt.engines.versions import detect_gpu, detect_tensorrt
    from segrt.runtime.models import resolve

    framed = form == "frame"
    fixed = list(parse_size(frame_size, "--frame-size")) if frame_size else None
    if fixed and not framed:
        raise ConfigError("--frame-size fixes the frame form's camera size; drop it with --form logits")
    if fixed and (min_shape or opt_shape or max_shape):
        raise ConfigError("--min/--opt/--max-shape give the range of frame sizes; with --frame-size there is one")
    lo, opt, hi = (_shape(min_shape, "--min-shape", framed), _shape(opt_shape, "--opt-shape", framed, max_batch),
                   _shape(max_shape, "--max-shape", framed, max_batch))
    source = resolve(model, "onnx")
    tgt = get_target(target)
    shapes = {}
    if min_shape or opt_shape or max_shape:
        from segrt.export.passes.frame_graph import FRAME_INPUT

        name = FRAME_INPUT if framed else inspect_model(source)[1].inputs[0].name
        given = [s for s in (lo, opt, hi) if s]
        shapes[name] = (lo or given[0], opt or given[0], hi or given[-1])
    request = BuildRequest(target=tgt.name, precision=precision, dla_core=dla_core, workspace_mb=workspace,
                           shapes=shapes, max_batch=max_batch, optimization_level=opt_level,
                           version_compatible=version_compatible, tensorrt=tensorrt, form=form, frame_size=fixed)

    if check_only:
        onnx_model, info = _model_to_check(source, form, fixed)
        for version in plan_versions(tgt, request):  # a request that cannot work fails here as it would in a build
            make_plan(tgt, info, version, request)
        reports = [check_model(onnx_model, tgt, v, precision or ("int8" if info.quantized else tgt.default_precision),
                               dla_core is not None, model_name=source.name) for v in plan_versions(tgt, request)]
        _print_reports(console, reports)
        if not all(r.ok for r in reports):
            raise typer.Exit(2)
        return

    out = output or Path("build") / f"{source.name.removesuffix('.onnx')}-{tgt.name}"
    with console.status(f"planning, preparing and checking {source.name} for {tgt.name}"):
        bundle = write_bundle(source, out, tgt, request)
    if bundle.fp16_error is not None:
        console.print(f"FP16 ONNX vs FP32 in ONNX Runtime on real images: max relative error "
                      f"{bundle.fp16_error[0]:.2e}, label agreement {bundle.fp16_error[1]:.4%}")
    _print_reports(console, bundle.reports)
    console.print(f"[green]wrote bundle[/] {out}/: " + ", ".join(f.name for f in bundle.files))
    if not bundle.ok and not force:
        console.print("[red]the compatibility check found errors; fix the export "
                      "(or --force to keep the bundle anyway)[/]")
        raise typer.Exit(2)

    running, gpu = detect_tensorrt(), detect_gpu()
    reason = ("--no-engine" if no_engine else "TensorRT is not installed here" if running is None
              else "no CUDA GPU is visible here" if gpu is None
              else f"this GPU ({gpu.name}, {gpu.sm}) is not a {tgt.name} ({tgt.sm})" if not tgt.accepts_gpu(gpu)
              else None)
    if reason:
        console.print(f"engine not built: {reason}. On the device: [bold]{out}/build_engine.sh[/] "
                      f"(or build_engine_trtexec.sh)")
        return
    _from_plan(console, out / "plan.json", None, verbose)


def register(root: typer.Typer) -> None:
    root.command("build")(build_command)
