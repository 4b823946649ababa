"""`segrt export CHECKPOINT -o model.onnx`: verified ONNX export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer
from rich.console import Console

from segrt.commands._args import (
    MAX_AREA,
    MAX_SIDE,
    MIN_SIDE,
    at_least_one,
    choice,
    existing_folder,
    in_range,
    model_spec,
    option_name,
    output_file,
    parse_size,
    positive,
    size_option,
)

PRECISIONS = ("fp32", "fp16", "int8")
INT8_FORMS = ("cpu", "qdq")  # segrt.export.passes.quantize_cpu.INT8_FORMS (not imported: the CLI starts fast)
FORMS = ("frame", "logits")
POSTS = ("refine", "dense")
OPS = ("cpu", "portable")  # segrt.export.passes.cpu_form.OPS
MERGE_OPS = ("function", "inline", "plugin")


def merge_option(param: typer.CallbackParam, value: str) -> str:
    """--merge is parsed and validated while the command line is read, before the checkpoint loads."""
    if value.strip().lower() == "none":
        return value
    from segrt.export.methods.merging.model import merge_config
    from segrt.runtime.errors import ConfigError

    try:
        merge_config(value)
    except ConfigError as exc:
        raise ConfigError(f"{option_name(param)}: {exc}") from exc
    return value


def export_command(
    checkpoint: str = typer.Argument("camvid-b0", callback=model_spec,
                                     help="checkpoint file/folder, bundled name, or random:b0:NUM_CLASSES"),
    output: Path = typer.Option(..., "-o", "--output", help="ONNX file to write", callback=output_file),
    size: str = typer.Option(None, "--size", callback=size_option,
                             help=f"fixed input size HxW (default: the model's own, else 512x512); sides "
                                  f"{MIN_SIDE}..{MAX_SIDE}, at most {MAX_AREA} pixels"),
    dynamic: bool = typer.Option(False, "--dynamic", help="dynamic batch, height and width"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch",
                                       help="dynamic batch at the fixed input size (several cameras per run)"),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17..21)", callback=in_range(17, 21)),
    form: str = typer.Option(None, "--form", callback=choice(*FORMS),
                             help="frame (default): uint8 BGR frames in, label masks out, pre/post-processing in "
                                  "the graph; logits: float NCHW in, logits out (evaluation, users who want logits; "
                                  "the default with --merge-ops plugin, a TensorRT-only graph `segrt build` wraps)"),
    frame_size: str = typer.Option(None, "--frame-size", callback=size_option,
                                   help="frame form: fixed camera size HxW (default: any frame size)"),
    output_stride: int = typer.Option(1, "--output-stride", callback=in_range(1, 64),
                                      help="frame form: mask of ceil(H/N) x ceil(W/N) (default 1: the frame's size)"),
    post: str = typer.Option("refine", "--post", callback=choice(*POSTS),
                             help="frame form: refine (exact, fastest on ONNX Runtime CPU) or dense (Resize + "
                                  "ArgMax, for TensorRT)"),
    labels: bool = typer.Option(False, "--labels", help="logits form only: in-graph ArgMax at 1/4 resolution, "
                                                        "uint8 labels instead of logits"),
    tolerance: float = typer.Option(None, "--tolerance", callback=positive,
                                    help="max relative error vs PyTorch on real images (default 1e-4; 1e-3 with "
                                         "bipartite token merging, see segrt.export.methods.merging.model)"),
    precision: str = typer.Option("fp32", "--precision", callback=choice(*PRECISIONS),
                                  help="fp32; fp16 (mixed, for TensorRT); int8 (needs --calib; see --int8-form)"),
    int8_form: str = typer.Option(None, "--int8-form", callback=choice(*INT8_FORMS),
                                  help="int8: cpu (default: fastest on ONNX Runtime's CPU provider; dynamic weight "
                                       "MatMuls + Q/DQ reduction convs, standard ONNX ops TensorRT does not parse) or "
                                       "qdq (symmetric explicit Q/DQ, the file `segrt build` needs for TensorRT)"),
    calib: Path = typer.Option(None, "--calib", callback=existing_folder,
                               help="int8: folder of calibration images (e.g. CamVid train) or a dataset root with "
                                    "train/"),
    calib_count: int = typer.Option(64, "--calib-count", callback=at_least_one,
                                    help="int8: calibration images, spread evenly over the folder"),
    merge: str = typer.Option("none", "--merge", callback=merge_option,
                              help="token merging without retraining: none, 2x2, hq, fast, downsample, "
                                   "or a per-stage JSON config (text or .json file)"),
    inline_merge_ops: bool = typer.Option(False, "--inline-merge-ops", help="same as --merge-ops inline"),
    merge_ops: str = typer.Option("function", "--merge-ops", callback=choice(*MERGE_OPS),
                                  help="token merge ops as: function (segrt.TokenMerge local functions, run by ONNX "
                                       "Runtime and every TensorRT), inline (plain standard ops), plugin (TensorRT "
                                       ">= 10.9 AOT plugin nodes, no function body; see docs/plugins.md)"),
    no_fold: bool = typer.Option(False, "--no-fold",
                                 help="keep the decoder as trained (default: exact decoder folding)"),
    ops: str = typer.Option("cpu", "--ops", callback=choice(*OPS),
                            help="cpu (default): ops in the forms ONNX Runtime's CPU provider runs fastest (narrow "
                                 "LayerNorms as InstanceNormalization, token-merge sums as one-hot MatMuls); "
                                 "portable: as exported, for other runtimes (segrt build, --precision fp16 and "
                                 "--int8-form qdq make the portable form themselves)"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                      help="allow a .pth/.bin pickle holding more than tensors "
                                           "(unpickling runs its code: only for files you trust)"),
) -> None:
    """Export a SegFormer to ONNX (dynamo exporter), embed its metadata, and verify it against PyTorch."""
    from segrt.export.loading import load_model
    from segrt.export.onnx_export import export_onnx

    check_precision(precision, calib, int8_form)
    merge_ops = check_merge_ops(merge_ops, inline_merge_ops, merge, precision)
    form = form or ("logits" if merge_ops == "plugin" else "frame")
    check_form(form, labels, frame_size, output_stride, post)
    console = Console()
    with console.status("loading checkpoint"):
        loaded = load_model(checkpoint, trust_pickle=trust_pickle)
    hw = parse_size(size) if size else (loaded.metadata.input_size or (512, 512))
    model, transform, default_tolerance = merged_model(console, loaded, merge, merge_ops == "inline", hw, dynamic)
    tolerance = default_tolerance if tolerance is None else tolerance
    fp32_out = output if precision == "fp32" else output.with_name(output.stem + ".fp32.onnx")
    with console.status(f"exporting {'dynamic' if dynamic else f'{hw[0]}x{hw[1]}'} ONNX and verifying on real images"):
        # INT8/FP16: the logits graph is converted first and wrapped afterwards (the wrapper stays FP32)
        result = export_onnx(model, loaded.metadata, fp32_out, size=hw, dynamic=dynamic, opset=opset,
                             output="labels" if labels else "logits", tolerance=tolerance, transform=transform,
                             fold=not no_fold, form=form if precision == "fp32" else "logits",
                             frame_size=parse_size(frame_size, "--frame-size") if frame_size else None,
                             output_stride=output_stride, post=post, dynamic_batch=dynamic_batch, ops=ops)
    console.print(f"[green]wrote[/] {result.path}  ({result.path.stat().st_size / 1e6:.1f} MB)")
    console.print(f"verified on {result.images} real images: max relative error {result.max_rel_error:.2e}, "
                  f"label agreement {result.label_agreement:.4%}")
    if result.frame_agreement is not None:
        console.print(f"frame form ({post}): mask agreement with the reference path {result.frame_agreement:.4%} "
                      "(worst frame)")
    if merge_ops == "plugin":
        from segrt.export.methods.merging.plugin_form import write_plugin_form

        count = write_plugin_form(result.path)
        console.print(f"[green]rewrote[/] {result.path} in plugin form: {count} segrt::TokenMerge AOT plugin nodes "
                      "(verified above in function form; builds on TensorRT >= 10.9 only, see docs/plugins.md)")
    if precision != "fp32":
        convert_precision(console, precision, fp32_out, output, calib, calib_count, hw, int8_form or "cpu")
        if form == "frame":
            wrap_converted(console, output, frame_size, output_stride, post)


def merged_model(console: Console, loaded, merge: str, inline: bool, hw: tuple[int, int], dynamic: bool):
    """Install token merging (recorded in the model's metadata); pick the graph transform and the
    default verification tolerance."""
    from segrt.export.methods.merging.model import (
        MATCHING_TOLERANCE,
        apply_merging,
        describe,
        merge_config,
        plan_tokens,
    )
    from segrt.export.methods.merging.ops import inline_merge_ops
    from segrt.export.onnx_export import TOLERANCE
    from segrt.runtime.errors import ConfigError

    config = merge_config(merge)
    if config.is_identity:
        return loaded.model, None, TOLERANCE
    if dynamic and config.needs_static_size:
        raise ConfigError(f"--merge {merge}: bipartite matching uses index sets fixed by the grid; drop --dynamic")
    loaded.metadata.extra["token_merge"] = describe(config)
    for p in plan_tokens(loaded.model.config, config, hw):
        console.print(f"stage {p.stage} ({p.grid[0]}x{p.grid[1]}): queries {p.queries[0]} -> {p.queries[1]}, "
                      f"keys/values {p.keys_values[0]} -> {p.keys_values[1]}")
    tolerance = MATCHING_TOLERANCE if config.needs_static_size else TOLERANCE
    return apply_merging(loaded.model, config), (inline_merge_ops if inline else None), tolerance


def check_merge_ops(merge_ops: str, inline: bool, merge: str, precision: str) -> str:
    """The form of the token merge ops; --inline-merge-ops is the older spelling of --merge-ops inline."""
    from segrt.runtime.errors import ConfigError

    if inline and merge_ops not in ("function", "inline"):
        raise ConfigError(f"--inline-merge-ops and --merge-ops {merge_ops} contradict each other; give one")
    form = "inline" if inline else merge_ops
    if form != "plugin":
        return form
    from segrt.export.methods.merging.model import merge_config

    if not merge_config(merge).needs_static_size:
        raise ConfigError(f"--merge-ops plugin: --merge {merge} has no bipartite matching, so there is no TokenMerge "
                          "to make a plugin of; use --merge hq, fast or a JSON config with 'bsm'")
    if precision != "fp32":
        raise ConfigError(f"--merge-ops plugin with --precision {precision}: the TokenMerge plugin computes in FP32 "
                          "and the FP16/INT8 conversions are verified with ONNX Runtime, which cannot run plugin "
                          "nodes; export FP32 (TensorRT 10 still builds FP16 around the plugin) or use the "
                          "function form")
    return form


def check_form(form: str, labels: bool, frame_size: str | None, output_stride: int, post: str) -> None:
    from segrt.runtime.errors import ConfigError

    if form not in FORMS:
        raise ConfigError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    if form == "frame" and labels:
        raise ConfigError("--labels is for --form logits (labels at 1/4 resolution); the frame form already returns "
                          "full-resolution labels")
    if form == "logits" and (frame_size or output_stride != 1 or post != "refine"):
        raise ConfigError("--frame-size, --output-stride and --post apply to --form frame only")


def wrap_converted(console: Console, path: Path, frame_size: str | None, output_stride: int, post: str) -> None:
    """The converted (FP16/INT8) logits graph at ``path`` -> its frame form, verified, in place."""
    from segrt.export.passes.frame_graph import wrap_file
    from segrt.runtime.samples import sample_frames

    with console.status("wrapping into the frame form and verifying on real frames"):
        agreement = wrap_file(path, path, sample_frames(), output_stride=output_stride, post=post,
                              frame_size=parse_size(frame_size, "--frame-size") if frame_size else None)
    console.print(f"[green]wrote[/] {path} (frame form, {post}): mask agreement with the reference path on the "
                  f"converted network {agreement:.4%} (worst frame)")


def check_precision(precision: str, calib: Path | None, int8_form: str | None = None) -> None:
    from segrt.runtime.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if int8_form is not None and precision != "int8":
        raise ConfigError(f"--int8-form {int8_form} applies to --precision int8 only (got --precision {precision})")
    if int8_form is not None and int8_form not in INT8_FORMS:
        raise ConfigError(f"unknown INT8 form {int8_form!r}; expected one of {', '.join(INT8_FORMS)}")
    if precision == "int8" and calib is None:
        raise ConfigError("--precision int8 needs --calib DIR: a folder of real images to calibrate on "
                          "(e.g. CamVid train)")
    if precision == "fp16" and importlib.util.find_spec("segrt.export.passes.fp16") is None:
        raise ConfigError("--precision fp16 is not available in this installation "
                          "(segrt.export.passes.fp16 is missing)")


def convert_precision(console: Console, precision: str, fp32_path: Path, output: Path, calib: Path | None,
                      calib_count: int, hw: tuple[int, int], int8_form: str = "cpu") -> None:
    """The FP32 export (kept next to the output as NAME.fp32.onnx, the reference) -> fp16 or int8."""
    from segrt.runtime.samples import sample_frames

    if precision == "fp16":
        from segrt.export.passes.fp16 import export_fp16

        with console.status("converting to FP16 and verifying against FP32"):
            fp16 = export_fp16(fp32_path, output)
        console.print(f"[green]wrote[/] {fp16.path} (FP16; {fp16.fp32_nodes} nodes kept in FP32): relative error "
                      f"{fp16.max_rel_error:.2e}, label agreement {fp16.label_agreement:.4%} vs FP32")
        return
    from segrt.export.passes.quantize import label_agreement
    from segrt.export.passes.quantize_cpu import quantize_int8_form

    q = quantize_int8_form(fp32_path, output, calib, calib_count, form=int8_form, size=hw)  # type: ignore[arg-type]
    agree = label_agreement(fp32_path, output, sample_frames(), size=hw)
    what = ("INT8 CPU form for ONNX Runtime (dynamic weight MatMuls, Q/DQ reduction convs; TensorRT needs "
            "--int8-form qdq)" if int8_form == "cpu" else "INT8 Q/DQ")
    calibrated = f"calibrated on {q.calibration_images} images" if q.calibration_images else "no calibration needed"
    console.print(f"[green]wrote[/] {q.path} ({what}, {calibrated}; quantized "
                  f"{', '.join(f'{n} {k}' for k, n in q.quantized_nodes.items())}): label agreement with FP32 "
                  f"{min(agree):.4%} (worst of {len(agree)} sample frames)")


def register(root: typer.Typer) -> None:
    root.command("export")(export_command)
