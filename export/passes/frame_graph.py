"""Wrap a logits-form segrt ONNX into the frame form: uint8 BGR frame in, label mask out (issue 18).

The frame form moves what ``runtime/preprocess.py`` does around the network into the graph: resize to the
network's size, BGR -> RGB, normalisation and NCHW before it; bilinear upsampling of the logits (half_pixel,
like ``cv2.INTER_LINEAR``) to the mask size and argmax after it. Any logits-form export can be wrapped (plain,
folded, merged with local functions, pruned, gated, early exit, INT8 Q/DQ, FP16): its nodes, initializers,
functions, opset and IR version are kept as they are, and :func:`network_of` cuts them back out.

Two post-processing forms compute the same argmax(bilinear(logits)):

- ``dense``: Resize of all K logit planes to the mask size, ArgMax, Cast. For TensorRT (ArgMax runs as TopK
  k=1; UINT8 only at the I/O, next to a Cast).
- ``refine``: exact and cheaper on a CPU (:func:`_refine`). Each mask row is made of segments between two
  neighbouring low-resolution columns. Along a segment the logits are a convex combination of its two ends, so
  a segment whose ends have the same argmax has that label for every pixel in it (a convex combination keeps
  the dominant class dominant). Only the mixed segments (~10%) are interpolated pixel by pixel, so no K
  full-resolution float planes are ever made. The end labels (the argmax of the vertically resized logits at
  the low-resolution columns) come from the same argument along columns (:func:`_column_labels`), so not even
  the K planes at full height are made.

Two pre-processing forms resize the frame to the network's size (:data:`PRES`):

- ``exact`` (default): cv2.resize(INTER_LINEAR)'s fixed-point arithmetic reproduced in exact integer (and
  exact float) steps, so the network sees the very input of the reference path: :func:`_cv2_resize_planes` for
  ONNX Runtime, bit for bit at any frame size; :func:`_cv2_resize` on the int32 frame for TensorRT's dense form,
  bit for bit with a fixed frame size, while with a dynamic one its source coordinates are computed in float32
  (TensorRT has no double), which moves a value by one level at some pairs of sizes (0.05% of the values from
  301x457 to 37x53, 0.4-0.5% from 37x1999; none from 720p or 1080p to 384x512; tests/export/test_frame_graph.py).
- ``resize``: ONNX Resize (linear, half_pixel) on the frame cast to float, NHWC. Up to ~0.8 grey levels off
  cv2's rounding, and the trained camvid-b0 turns that into mask differences on real frames: CamVid val upscaled
  to 720p/1080p 99.81% worst frame, 99.89-99.90% mean; bikes.mp4 at 640x272/720p/1080p 98.96-99.29% worst,
  99.50-99.58% mean. Below the contract on some frames, so not the default (wrap_verified refuses it where it
  falls short), and slower end to end than the exact form (benchmarks/results/post_forms.md).

Needs onnx and numpy (ONNX Runtime for the verification helpers at the end), no torch: ``segrt build`` runs it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segrt.runtime.errors import ExportError
from segrt.runtime.metadata import MAX_OUTPUT_STRIDE, METADATA_KEY, ModelMetadata
from segrt.runtime.preprocess import normalisation

POSTS = ("refine", "dense")
PRES = ("exact", "resize")
PREFIX = "segrt_frame/"  # names of the wrapper's nodes, initializers and tensors
FRAME_INPUT = "frame"
MASK_OUTPUT = "mask"
MAX_STRIDE = MAX_OUTPUT_STRIDE  # the runtime metadata's bound
MIN_OPSET = 13


class _Builder:
    """Nodes and initializers of the wrapper, every name under :data:`PREFIX`."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, value, dtype=None, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1,
           out: str | None = None, **attrs) -> str:
        names = [out] if out is not None else [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs))
        return names[0]

    def i64(self, *values: int) -> str:
        return self.const(np.array(values, np.int64), hint="i64")

    def dim(self, shape: str, axis: int) -> str:
        """Element ``axis`` of a Shape output as an int64 (1,) tensor."""
        return self.op("Slice", [shape, self.i64(axis), self.i64(axis + 1)], "dim")

    def reduce_max(self, x: str) -> str:
        # ReduceMax took its axes as an attribute before opset 18 and as an input from 18 on
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.i64(0)], keepdims=1)
        return self.op("ReduceMax", [x], axes=[0], keepdims=1)


# ---------------------------------------------------------------------------------------- reading a model


def _raw_metadata(model: onnx.ModelProto) -> dict:
    values = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
    if not values:
        raise ExportError("the model carries no segrt metadata; export it with `segrt export --form logits`")
    try:
        raw = json.loads(values[0])
    except ValueError as exc:
        raise ExportError(f"the model's segrt metadata is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ExportError("the model's segrt metadata is not a JSON object")
    return raw


def is_frame_form(model: onnx.ModelProto) -> bool:
    raw = _raw_metadata(model) if any(p.key == METADATA_KEY for p in model.metadata_props) else {}
    return raw.get("form") == "frame"


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def _graph_io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    init = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ExportError(f"a logits-form model has one input and one output; this one has {len(inputs)} inputs "
                          f"and {len(model.graph.output)} outputs")
    inp, out = inputs[0], model.graph.output[0]
    if inp.type.tensor_type.elem_type == TensorProto.UINT8:
        raise ExportError(f"the model's input {inp.name!r} is uint8: it is already frame form")
    shape = _dims(inp)
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or len(shape) != 4 or shape[1] not in (3, None):
        raise ExportError(f"the model's input {inp.name!r} is not float32 (N, 3, H, W)")
    if out.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16) or len(_dims(out)) != 4:
        raise ExportError(f"the model's output {out.name!r} is not (N, K, h, w) float logits")
    return inp, out


def _check_args(frame_size, output_stride: int, post: str, pre: str = "exact") -> tuple[int, int] | None:
    if post not in POSTS:
        raise ExportError(f"unknown post-processing {post!r}; expected one of {', '.join(POSTS)}")
    if pre not in PRES:
        raise ExportError(f"unknown pre-processing {pre!r}; expected one of {', '.join(PRES)}")
    if isinstance(output_stride, bool) or not isinstance(output_stride, (int, np.integer)) \
            or not 1 <= output_stride <= MAX_STRIDE:
        raise ExportError(f"output_stride must be an integer in 1..{MAX_STRIDE}, got {output_stride!r}")
    if frame_size is None:
        return None
    if len(frame_size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                                       for v in frame_size):
        raise ExportError(f"frame_size must be (height, width) positive integers, got {frame_size!r}")
    return int(frame_size[0]), int(frame_size[1])


# ---------------------------------------------------------------------------------------- the wrapper


def to_frame_form(model: onnx.ModelProto, *, frame_size: tuple[int, int] | None = None, output_stride: int = 1,
                  post: str = "refine", mask_int32: bool = False, pre: str = "exact") -> onnx.ModelProto:
    """The frame form of a logits-form segrt model (a new ModelProto; ``model`` is not changed).

    ``frame_size`` fixes the frame input's (H, W) (None: any size). ``mask_int32`` gives int32 masks past
    256 classes (TensorRT has no UINT16); otherwise uint16. ``pre``: see :data:`PRES` and the module's docstring.
    """
    fixed = _check_args(frame_size, output_stride, post, pre)
    raw = _raw_metadata(model)
    if raw.get("form") == "frame":
        raise ExportError("the model is already frame form; wrap its logits form (frame_graph.network_of)")
    meta = ModelMetadata.from_onnx(model)
    assert meta is not None
    if meta.output != "logits":
        raise ExportError(f"the model's output is {meta.output!r}; only a logits-form model can be wrapped "
                          "(export with `segrt export --form logits` and without --labels)")
    inp, out = _graph_io(model)
    in_shape, out_shape = _dims(inp), _dims(out)
    k = meta.num_classes
    if out_shape[1] not in (None, k):
        raise ExportError(f"the metadata names {k} classes but the graph returns {out_shape[1]} channels")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset < MIN_OPSET:
        raise ExportError(f"the model has opset {opset}; the frame form needs opset >= {MIN_OPSET} (axes as inputs, "
                          "per-axis DequantizeLinear): re-export it with opset 17")
    net_size = (in_shape[2], in_shape[3]) if None not in in_shape[2:] else None
    if net_size is None and meta.input_size is not None:
        net_size = meta.input_size

    b = _Builder(opset)
    frame = _pre(b, inp.name, net_size, fixed, meta.mean, meta.std, cast_first=post == "dense", pre=pre)
    pre_end = len(b.nodes)
    frame_shape = b.op("Shape", [frame], "frame_shape")
    logits = out.name
    if out.type.tensor_type.elem_type == TensorProto.FLOAT16:
        logits = b.op("Cast", [logits], "logits32", to=TensorProto.FLOAT)
    mask_hw = _mask_size(b, frame_shape, output_stride)
    dtype = TensorProto.UINT8 if k <= 256 else (TensorProto.INT32 if mask_int32 else TensorProto.UINT16)
    if post == "dense":
        _dense(b, logits, mask_hw, dtype)
    else:
        _refine(b, logits, mask_hw, dtype)

    result = copy.deepcopy(model)
    graph = result.graph
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(b.nodes[:pre_end] + nodes + b.nodes[pre_end:])
    graph.initializer.extend(b.inits)
    # The network's own I/O stays described, so network_of can cut it back out with its exact types and shapes.
    for value in [v for v in graph.value_info if v.name in (inp.name, out.name)]:
        graph.value_info.remove(value)
    graph.value_info.extend([copy.deepcopy(inp), copy.deepcopy(out)])
    graph.input.remove(next(v for v in graph.input if v.name == inp.name))
    graph.output.remove(graph.output[0])
    batch = in_shape[0] if in_shape[0] is not None else "batch"
    hw = list(fixed) if fixed else ["height", "width"]
    graph.input.insert(0, helper.make_tensor_value_info(FRAME_INPUT, TensorProto.UINT8, [batch, *hw, 3]))
    mask_dims = [-(-fixed[0] // output_stride), -(-fixed[1] // output_stride)] if fixed else \
        ["mask_height", "mask_width"]
    graph.output.append(helper.make_tensor_value_info(MASK_OUTPUT, dtype, [batch, *mask_dims]))
    _write_metadata(result, raw, meta, fixed, output_stride, post, pre, inp.name, out.name, net_size)
    try:
        onnx.checker.check_model(result)
    except Exception as exc:  # onnx raises ValidationError and plain exceptions alike
        raise ExportError(f"the frame-form graph fails onnx.checker: {exc}") from exc
    return result


def _write_metadata(model, raw: dict, meta: ModelMetadata, fixed, stride: int, post: str, pre: str, net_in: str,
                    net_out: str, net_size) -> None:
    # Written as JSON next to ModelMetadata's fields so that runtimes without the frame fields read it too.
    record = json.loads(meta.to_json())
    record.update(form="frame", output="mask", frame_size=list(fixed) if fixed else None, output_stride=stride,
                  input_size=list(net_size) if net_size else None)
    record["extra"] = {**record.get("extra", {}), "post": post, "pre": pre, "network_input": net_in,
                       "network_output": net_out, "network_metadata": json.dumps(raw, sort_keys=True)}
    props = [p for p in model.metadata_props if p.key == METADATA_KEY]
    props[0].value = json.dumps(record, sort_keys=True)


def _pre(b: _Builder, net_input: str, net_size, fixed, mean, std, cast_first: bool, pre: str = "exact") -> str:
    """uint8 NHWC BGR frame -> the network's float NCHW normalised RGB input (named as the network's input);
    returns a tensor of the frame's shape for the mask size (never the UINT8 input itself with ``cast_first``).

    ``cast_first`` (TensorRT: a UINT8 network input must go straight into a Cast) casts the whole frame to int32;
    otherwise the exact resize gathers its bytes first and casts only the network-size result. ``pre="resize"``
    casts the whole frame to float and resizes it with ONNX Resize (before the channel swap and the
    normalisation: on the frame's levels, not on a normalised copy).
    """
    scale, offset = normalisation(mean, std)
    resize = net_size is not None and (fixed is None or tuple(fixed) != tuple(net_size))
    x = shaped = FRAME_INPUT
    if resize and pre == "resize":
        # channels last, no full-size transpose (NCHW planes were not consistently faster on ONNX Runtime CPU)
        x = shaped = b.op("Cast", [x], "frame_f", to=TensorProto.FLOAT)
        n = b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(1)], "n")
        sizes = b.op("Concat", [n, b.i64(int(net_size[0]), int(net_size[1]), 3)], "pre_sizes", axis=0)
        x = b.op("Resize", [x, "", "", sizes], "frame_small", mode="linear",
                 coordinate_transformation_mode="half_pixel")
        x = b.op("Gather", [b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2]), b.i64(2, 1, 0)], "rgb", axis=1)
    elif resize and not cast_first:
        # the levels scaled as they are cast: one pass instead of a Cast and a Mul (the same float products)
        x = b.op("DequantizeLinear", [_cv2_resize_planes(b, x, net_size, fixed), b.const(scale.astype(np.float32))],
                 "scaled", axis=1)
        b.op("Add", [x, b.const(offset.reshape(1, 3, 1, 1), np.float32)], out=net_input)
        return shaped
    else:
        if cast_first:
            x = shaped = b.op("Cast", [x], "frame_i", to=TensorProto.INT32 if resize else TensorProto.FLOAT)
        if resize:
            x = _cv2_resize(b, x, net_size, fixed, double=not cast_first)
        if not (cast_first and not resize):
            x = b.op("Cast", [x], "frame_f", to=TensorProto.FLOAT)
        x = b.op("Gather", [b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2]), b.i64(2, 1, 0)], "rgb", axis=1)
    x = b.op("Mul", [x, b.const(scale.reshape(1, 3, 1, 1), np.float32)], "scaled")
    b.op("Add", [x, b.const(offset.reshape(1, 3, 1, 1), np.float32)], out=net_input)
    return shaped


RESIZE_COEF = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit fixed-point weights


def _cv2_coefficients(b: _Builder, n_in: str | int, n_out: int, clamp: bool, double: bool):
    """Source indices and fixed-point weights of one axis, computed as OpenCV's resize does (see _cv2_resize)."""
    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    if isinstance(n_in, int):  # a fixed frame size: the same arithmetic in numpy, stored as constants
        return tuple(b.const(c) for c in _cv2_coefficients_fixed(n_in, n_out, clamp))
    # cv2 computes the coordinate in double, then rounds it to float (TensorRT has no double: float there)
    ft, np_ft = (TensorProto.DOUBLE, np.float64) if double else (f32, np.float32)
    scale = b.op("Div", [b.op("Cast", [n_in], to=ft), b.const(np.array(n_out, np_ft))])
    pos = b.const((np.arange(n_out) + 0.5).astype(np_ft))
    f = b.op("Cast", [b.op("Sub", [b.op("Mul", [pos, scale]), b.const(np.array(0.5, np_ft))])], to=f32)
    s_f = b.op("Floor", [f])
    f = b.op("Sub", [f, s_f])
    s = b.op("Cast", [s_f], to=i64)
    last = b.op("Sub", [n_in, b.i64(1)])
    if clamp:
        outside = b.op("Or", [b.op("Less", [s, b.const(np.int64(0))]), b.op("GreaterOrEqual", [s, last])])
        f = b.op("Where", [outside, b.const(np.float32(0)), f])
        s = b.op("Where", [b.op("Less", [s, b.const(np.int64(0))]), b.const(np.int64(0)),
                           b.op("Min", [s, last])])
    coef = b.const(np.float32(RESIZE_COEF))
    w0 = b.op("Cast", [b.op("Round", [b.op("Mul", [b.op("Sub", [b.const(np.float32(1)), f]), coef])])], to=i32)
    w1 = b.op("Cast", [b.op("Round", [b.op("Mul", [f, coef])])], to=i32)
    zero = b.const(np.array([0], np.int64))
    i0 = b.op("Clip", [s, b.op("Squeeze", [zero]), b.op("Squeeze", [last])])
    i1 = b.op("Clip", [b.op("Add", [s, b.const(np.int64(1))]), b.op("Squeeze", [zero]), b.op("Squeeze", [last])])
    return i0, i1, w0, w1


def _cv2_coefficients_fixed(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """:func:`_cv2_coefficients` of a fixed frame size in numpy: source indices (int64) and weights (int32)."""
    coord = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    floor = np.floor(coord)
    frac = (coord - floor).astype(np.float32)
    start = floor.astype(np.int64)
    if clamp:
        frac[(start < 0) | (start >= n_in - 1)] = 0
        start = np.where(start < 0, 0, np.where(start >= n_in - 1, n_in - 1, start))
    w0 = np.rint((np.float32(1) - frac) * np.float32(RESIZE_COEF)).astype(np.int32)
    w1 = np.rint(frac * np.float32(RESIZE_COEF)).astype(np.int32)
    return np.clip(start, 0, n_in - 1), np.clip(start + 1, 0, n_in - 1), w0, w1


def _cv2_resize(b: _Builder, x: str, net_size, fixed, double: bool) -> str:
    """cv2.resize(frame, INTER_LINEAR) of (N, H, W, 3) bytes to the network size, bit for bit.

    OpenCV resizes uint8 in fixed point: 11-bit weights from float coordinates (half_pixel; horizontally a source
    coordinate outside the frame takes the edge pixel), a horizontal pass in int32, then its SIMD vertical pass
    ((((row0 >> 4) * b0) >> 16) + (((row1 >> 4) * b1) >> 16) + 2) >> 2. ONNX Resize (float, or uint8 which
    truncates) differs by up to one level on 10-30% of pixels, which moves 0.1-0.5% of mask pixels on real frames
    (up to 1-2% on some). The graph gathers the two source rows and columns of every output pixel and does the same
    integer arithmetic. This layout (NHWC, pixel by pixel) is the one for TensorRT (``cast_first``: on the int32
    frame); ONNX Runtime runs :func:`_cv2_resize_planes`.
    """
    i32 = TensorProto.INT32
    h_in, w_in = _frame_hw(b, x, fixed)
    y0, y1, b0, b1 = _cv2_coefficients(b, h_in, net_size[0], clamp=False, double=double)
    x0, x1, a0, a1 = _cv2_coefficients(b, w_in, net_size[1], clamp=True, double=double)
    # (1, 1, w, 3), not (1, 1, w, 1): ONNX Runtime broadcasts a matching innermost axis ~20x faster
    a0, a1 = (b.op("Expand", [b.op("Reshape", [a, b.i64(1, 1, -1, 1)]), b.i64(1, 1, 1, 3)]) for a in (a0, a1))
    b0, b1 = (b.op("Reshape", [v, b.i64(1, -1, 1, 1)]) for v in (b0, b1))
    rows = []
    for y in (y0, y1):
        row = b.op("Gather", [x, y], "src_row", axis=1)  # (N, h, W, 3): whole rows, still bytes when not cast
        c0, c1 = (b.op("Cast", [b.op("Gather", [row, c], "src_px", axis=2)], to=i32) for c in (x0, x1))
        rows.append(_cv2_horizontal(b, c0, c1, a0, a1))
    return _cv2_vertical(b, rows, (b0, b1), "frame_small")


def _frame_hw(b: _Builder, x: str, fixed) -> tuple:
    """The frames' (H, W): ints for a fixed frame size, scalar int64 tensors of the (N, H, W, 3) input otherwise."""
    if fixed is not None:
        return int(fixed[0]), int(fixed[1])
    shape = b.op("Shape", [x])
    return b.op("Squeeze", [b.dim(shape, 1)]), b.op("Squeeze", [b.dim(shape, 2)])


def _cv2_horizontal(b: _Builder, c0: str, c1: str, a0: str, a1: str) -> str:
    """OpenCV's horizontal pass: the two source pixels (int32) by their 11-bit weights, <= 255 * 2048."""
    return b.op("Add", [b.op("Mul", [c0, a0]), b.op("Mul", [c1, a1])], "hpass")


def _cv2_vertical(b: _Builder, rows: list[str], weights: tuple[str, str], name: str | None = None) -> str:
    """OpenCV's SIMD vertical pass on two horizontal passes: ((((row0 >> 4) * b0) >> 16) + (((row1 >> 4) * b1)
    >> 16) + 2) >> 2 (non-negative int32, so floor division is the shift)."""
    return _cv2_vertical_shifted(b, [b.op("Div", [row, b.const(np.int32(16))]) for row in rows], weights, name)


def _cv2_vertical_shifted(b: _Builder, shifted: list[str], weights: tuple[str, str], name: str | None = None) -> str:
    """:func:`_cv2_vertical` from the horizontal passes already shifted (row >> 4, int32). No saturation is
    needed: each weight pair sums to 2048 (its halves round to even in opposite directions), so the sum is at
    most 1020 and the result at most 255."""
    parts = [b.op("Div", [b.op("Mul", [row, w]), b.const(np.int32(65536))]) for row, w in zip(shifted, weights)]
    return b.op("Div", [b.op("Add", [b.op("Add", parts), b.const(np.int32(2))]), b.const(np.int32(4))], name)


def _cv2_resize_planes(b: _Builder, x: str, net_size, fixed) -> str:
    """:func:`_cv2_resize` (the same integer arithmetic, bit for bit) laid out for ONNX Runtime CPU: uint8
    (N, H, W, 3) BGR frames -> uint8 (N, 3, h, w) RGB planes of cv2.resize's levels.

    ONNX Runtime gathers element by element, ~6 ns each: gathering the four source pixels of every output
    pixel (3 bytes each) was the largest part of the pre-processing. Here the two sets of source rows are
    gathered whole, each set is transposed as a 2-D byte matrix (N, W*3, h), and the source columns are gathered
    as whole h-byte rows of it, channel by channel in RGB order (3w gathers instead of hw). The arithmetic then
    runs on (N, w, 3, h), the vertical weights along the innermost axis, and one 2-D byte transpose gives NCHW.
    The horizontal pass is two DequantizeLinear with the per-column scales a / 16 (exact in float: c * a is an
    integer below 2^19, so c * a / 16 has at most 19 significant bits), whose sum's floor (the Cast to int32
    truncates) is row >> 4: one pass per source pixel instead of a Cast and a Mul, and no shift. With the byte
    transpose at the end and the normalisation's scale as a DequantizeLinear, pre-processing alone (2 threads,
    interleaved, thread spinning off so that the sessions compared do not slow each other) took 3.8 / 4.2 ms at
    720p / 1080p against 5.6 / 5.6 ms for the int32 Cast + Mul form.
    """
    i32 = TensorProto.INT32
    h, w = int(net_size[0]), int(net_size[1])
    h_in, w_in = _frame_hw(b, x, fixed)
    y0, y1, b0, b1 = _cv2_coefficients(b, h_in, h, clamp=False, double=True)
    x0, x1, a0, a1 = _cv2_coefficients(b, w_in, w, clamp=True, double=True)
    rgb = b.i64(2, 1, 0)
    # byte column X * 3 + c of a frame row for channel c of output column X, in RGB order: (3w,)
    cols = [b.op("Reshape", [b.op("Add", [b.op("Unsqueeze", [b.op("Mul", [c, b.const(np.int64(3))]), b.i64(1)]), rgb]),
                             b.i64(-1)], "src_cols") for c in (x0, x1)]
    # per output column: OpenCV's weights / 16, which DequantizeLinear applies along axis 1 of (N, w, 3, h)
    a0, a1 = (b.op("Div", [b.op("Cast", [a], to=TensorProto.FLOAT), b.const(np.float32(16))]) for a in (a0, a1))
    b0, b1 = (b.op("Reshape", [b.op("Cast", [v], to=i32), b.i64(1, 1, 1, h)]) for v in (b0, b1))
    shifted = []
    for y in (y0, y1):
        rows = b.op("Gather", [x, y], "src_row", axis=1)  # (N, h, W, 3) bytes
        rows = b.op("Transpose", [b.op("Reshape", [rows, b.i64(0, 0, -1)])], "src_cols_rows", perm=[0, 2, 1])
        c0, c1 = (b.op("Reshape", [b.op("Gather", [rows, c], "src_px", axis=1), b.i64(0, w, 3, h)])
                  for c in cols)  # (N, w, 3, h) bytes
        sixteenths = b.op("Add", [b.op("DequantizeLinear", [c0, a0], axis=1),
                                  b.op("DequantizeLinear", [c1, a1], axis=1)], "hpass16")  # hpass / 16, exact
        # the Cast truncates (ONNX Runtime: static_cast), the floor of a non-negative value: one pass less than Floor
        shifted.append(b.op("Cast", [sixteenths], to=i32))
    v = _cv2_vertical_shifted(b, shifted, (b0, b1))  # <= 255
    v = b.op("Reshape", [b.op("Cast", [v], "frame_u8", to=TensorProto.UINT8), b.i64(0, w, -1)])
    return b.op("Reshape", [b.op("Transpose", [v], perm=[0, 2, 1]), b.i64(0, 3, h, w)], "frame_small")


def _mask_size(b: _Builder, frame_shape: str, stride: int) -> str:
    """(2,) int64 mask size: ceil(H / stride), ceil(W / stride)."""
    hw = b.op("Slice", [frame_shape, b.i64(1), b.i64(3)], "frame_hw")
    if stride == 1:
        return hw
    return b.op("Div", [b.op("Add", [hw, b.i64(stride - 1)]), b.i64(stride)], "mask_hw")


def _dense(b: _Builder, logits: str, mask_hw: str, dtype: int) -> None:
    nk = b.op("Slice", [b.op("Shape", [logits]), b.i64(0), b.i64(2)], "nk")
    sizes = b.op("Concat", [nk, mask_hw], "up_sizes", axis=0)
    up = b.op("Resize", [logits, "", "", sizes], "up", mode="linear", coordinate_transformation_mode="half_pixel")
    labels = b.op("ArgMax", [up], "labels", axis=1, keepdims=0)
    b.op("Cast", [labels], out=MASK_OUTPUT, to=dtype)


def _refine(b: _Builder, logits: str, mask_hw: str, dtype: int) -> None:
    """Exact argmax(bilinear(logits)) through row segments (see the module's docstring)."""
    f32 = TensorProto.FLOAT
    shape = b.op("Shape", [logits], "lshape")
    n, w = b.dim(shape, 0), b.dim(shape, 3)
    hm, wm = b.dim(mask_hw, 0), b.dim(mask_hw, 1)
    # 1. labels of the vertically resized logits at the low-resolution columns: (N, Hm, w), by the same segment
    # argument along columns (_column_labels), without resizing K planes to Hm rows
    lt = b.op("Transpose", [logits], "nhwk", perm=[0, 2, 3, 1])
    k, h = b.dim(shape, 1), b.dim(shape, 2)
    col_labels, top_flat, bottom_flat, seg_y, t_y, top_lo = _column_labels(b, lt, h, w, k, hm)
    # 2. segments j = 0..w of each row lie between columns j-1 and j (clamped): left/right end labels
    first = b.op("Slice", [col_labels, b.i64(0), b.i64(1), b.i64(2)])
    last = b.op("Slice", [col_labels, b.i64(-1), b.i64(np.iinfo(np.int64).max), b.i64(2)])
    left = b.op("Concat", [first, col_labels], "left", axis=2)  # (N, Hm, w+1)
    right = b.op("Concat", [col_labels, last], "right", axis=2)
    mixed = b.op("Not", [b.op("Equal", [left, right])], "mixed")
    # 3. per mask column X, in integers so that segments are exact: source x = ((2X+1)w - Wm) / 2Wm (half_pixel),
    # segment j = floor(x) + 1 clamped to 0..w, and the weight of its right end the remainder / 2Wm
    xs = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [wm]), b.const(np.int64(1))], "xs")
    two_wm = b.op("Mul", [wm, b.i64(2)])
    num = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [xs, b.i64(2)]), b.i64(1)]), w]), wm])  # > 0
    seg = b.op("Clip", [b.op("Div", [num, two_wm]), b.const(np.int64(0)), b.op("Squeeze", [w])], "seg")
    # segment j covers mask columns [start_j, end_j) and slots [0, Bx) of row j of a (w+1, Bx) table; the first
    # segment is right-aligned, the others left-aligned, so that an integer scale (every inner segment Bx long)
    # makes the pixel map one contiguous run of the flattened table (a Slice instead of a Gather)
    js = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [b.op("Add", [w, b.i64(1)])]), b.const(np.int64(1))],
              "js")
    # end_j = #{X : seg(X) <= j} = min(Wm, (q + 1) // 2) with q = (Wm (2j + 1) - 1) // w, from the formula above
    q = b.op("Div", [b.op("Sub", [b.op("Mul", [wm, b.op("Add", [b.op("Mul", [js, b.i64(2)]), b.i64(1)])]),
                                  b.i64(1)]), w])
    ends = b.op("Min", [b.op("Div", [b.op("Add", [q, b.i64(1)]), b.i64(2)]), wm], "ends")  # (w+1,)
    starts = b.op("Concat", [b.i64(0), b.op("Slice", [ends, b.i64(0), b.i64(-1)])], "starts", axis=0)
    bx = b.reduce_max(b.op("Sub", [ends, starts]))  # (1,)
    first_end = b.op("Slice", [ends, b.i64(0), b.i64(1)])
    origin = b.op("Concat", [b.op("Sub", [first_end, bx]), b.op("Slice", [starts, b.i64(1), b.i64(-1 + 2 ** 62)])],
                  "origin", axis=0)  # column of slot 0 of each segment
    slot = b.op("Sub", [xs, b.op("Gather", [origin, seg], axis=0)], "slot")
    pix = b.op("Add", [b.op("Mul", [seg, bx]), slot], "pix")  # (Wm,) index into the flat (w+1)*Bx table
    slots = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [bx]), b.const(np.int64(1))], "slots")
    slot_x = b.op("Add", [b.op("Unsqueeze", [origin, b.i64(1)]), slots])  # (w+1, Bx) columns
    slot_x = b.op("Clip", [slot_x, b.const(np.int64(0)), b.op("Squeeze", [b.op("Sub", [wm, b.i64(1)])])])
    # right-end weight of each slot (slots outside their segment are never read; clipped to stay finite)
    slot_num = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [slot_x, b.i64(2)]), b.i64(1)]), w]), wm])
    rem = b.op("Sub", [slot_num, b.op("Mul", [b.op("Unsqueeze", [js, b.i64(1)]), two_wm])])
    weight = b.op("Div", [b.op("Cast", [rem], to=f32), b.op("Cast", [two_wm], to=f32)])
    weight = b.op("Clip", [weight, b.const(np.float32(0)), b.const(np.float32(1))], "weight")  # (w+1, Bx)
    # 4. mixed segments (M of them) with end labels a != b. Along a segment the logits are lines in the weight t,
    # a wins at t = 0 and b at t = 1, and their upper envelope has its one kink where a and b cross, at t*. A third
    # class can win somewhere in [0, 1] only if it beats both at t*. So a segment whose argmax at t* is a or b is
    # "a below t*, b above" (an (M, Bx) comparison); only the rest (rare) interpolate all K logits per pixel.
    # Flat indices (NonZero of a 1-D tensor, Gather on axis 0) cost a fraction of NonZero/GatherND on (N, Hm, w+1).
    # Mixed segments are inner (j in 1..w-1: segments 0 and w have equal ends), between columns j-1 and j.
    flat_idx = b.op("Squeeze", [b.op("NonZero", [b.op("Reshape", [mixed, b.i64(-1)])]), b.i64(0)], "mixed_idx")
    w1 = b.op("Add", [w, b.i64(1)])
    row = b.op("Div", [flat_idx, w1])  # n * Hm + y
    seg_j = b.op("Sub", [flat_idx, b.op("Mul", [row, w1])], "seg_j")  # (M,)
    at_b = b.op("Add", [b.op("Mul", [row, w]), seg_j])  # index of column j in the flattened (N * Hm * w) rows
    at_a = b.op("Sub", [at_b, b.i64(1)])
    # Per-segment values run classes (or slots) by segments, (K, M) and (Bx, M), so that every per-segment factor
    # is a (1, M) row: ONNX Runtime broadcasts along the innermost axis ~6x faster than an (M, 1) column over
    # (M, K) (0.03 vs 0.19 ms for 15778 x 11 floats, 2 threads). The same elementwise operations in another
    # layout: the masks are bit for bit those of the (M, K) form.
    # the segment's end logits: the vertical interpolation at its row of columns j-1 and j
    image = b.op("Div", [row, hm])
    y = b.op("Sub", [row, b.op("Mul", [image, hm])])
    src_b = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [image, b.op("Add", [h, b.i64(1)])]),
                                                   b.op("Gather", [seg_y, y], axis=0)]), w]), seg_j])
    t_row = b.op("Unsqueeze", [b.op("Gather", [t_y, y], axis=0), b.i64(0)])  # (1, M)
    end_a, end_b = (_lerp_t(b, top_flat, bottom_flat, src, t_row, f"end_{e}")
                    for e, src in (("a", b.op("Sub", [src_b, b.i64(1)])), ("b", src_b)))  # (K, M)
    labels_flat = b.op("Reshape", [col_labels, b.i64(-1)])
    label_a, label_b = (b.op("Unsqueeze", [b.op("Gather", [labels_flat, i], axis=0), b.i64(0)], f"label_{e}")
                        for e, i in (("a", at_a), ("b", at_b)))  # (1, M)
    at = {(e, c): b.op("GatherElements", [e, c], axis=0) for e in (end_a, end_b) for c in (label_a, label_b)}
    lead_a = b.op("Sub", [at[end_a, label_a], at[end_a, label_b]])  # >= 0
    lead_b = b.op("Sub", [at[end_b, label_b], at[end_b, label_a]])  # >= 0, and not both 0 since a != b
    cross = b.op("Div", [lead_a, b.op("Add", [lead_a, lead_b])], "t_cross")  # (1, M)
    diff = b.op("Sub", [end_b, end_a])
    at_cross = b.op("ArgMax", [b.op("Add", [end_a, b.op("Mul", [diff, cross])])], axis=0, keepdims=1)
    two = b.op("Or", [b.op("Equal", [at_cross, label_a]), b.op("Equal", [at_cross, label_b])], "two_classes")
    # whole rows of Bx weights, then one transpose: a Gather along axis 1 copies float by float (in isolation, the
    # stage that ends here took 0.17 / 0.35 ms less at 720p / 1080p)
    t = b.op("Transpose", [b.op("Gather", [weight, seg_j], axis=0)], "t", perm=[1, 0])  # (Bx, M)
    # a + (b - a) [t >= t*] in float (exact for labels < 2^24): ONNX Runtime's broadcasting Where is several
    # times slower than this Mul and Add
    label_a_f = b.op("Cast", [label_a], to=f32)
    step = b.op("Cast", [b.op("GreaterOrEqual", [t, cross])], to=f32)
    labels = b.op("Add", [label_a_f, b.op("Mul", [step, b.op("Cast", [b.op("Sub", [label_b, label_a])], to=f32)])],
                  "two_labels")  # (Bx, M)
    rare = b.op("Squeeze", [b.op("NonZero", [b.op("Not", [b.op("Squeeze", [two, b.i64(0)])])]), b.i64(0)])  # (M3,)
    r_a, r_diff, r_t = (b.op("Gather", [x, rare], axis=1) for x in (end_a, diff, t))  # (K, M3), (K, M3), (Bx, M3)
    values = b.op("Add", [b.op("Unsqueeze", [r_a, b.i64(1)]),
                          b.op("Mul", [b.op("Unsqueeze", [r_diff, b.i64(1)]), b.op("Unsqueeze", [r_t, b.i64(0)])])])
    r_labels = b.op("ArgMax", [values], "rare_labels", axis=0, keepdims=0)  # (Bx, M3)
    labels = b.op("Transpose", [labels], perm=[1, 0])  # (M, Bx), rows of the segment table
    r_labels = b.op("Transpose", [r_labels], perm=[1, 0])  # (M3, Bx)
    labels = b.op("ScatterND", [labels, b.op("Unsqueeze", [rare, b.i64(1)]), b.op("Cast", [r_labels], to=f32)])
    # the table is uint8, or int32 past 256 classes (cast to uint16 at the end)
    table_type = dtype if dtype == TensorProto.UINT8 else TensorProto.INT32
    seg_labels = b.op("Cast", [labels], "seg_labels", to=table_type)
    # 5. segment table (N, Hm, w+1, Bx): uniform segments repeat their label, mixed ones get their pixels. The
    # repeat is a float outer product with ones (exact for labels < 2^24) and a Cast: on ONNX Runtime CPU about
    # twice as fast as Resize nearest on the bytes, and five times Expand or Tile. It is made for the h+1 vertical
    # segments of the low-resolution rows only, from their top labels, and every mask row copies the table row of
    # its segment (a Gather of whole rows); the entries where a mask row's left label is not its segment's top one
    # (vertically mixed columns past their crossing) are then repeated and scattered, and the mixed segments last
    ones = b.op("ConstantOfShape", [b.op("Concat", [b.i64(1), bx], axis=0)], "ones",
                value=numpy_helper.from_array(np.ones(1, np.float32)))

    def repeat(labels: str) -> str:  # int64 labels (...) -> (..., Bx) of the table's type
        wide = b.op("MatMul", [b.op("Unsqueeze", [b.op("Cast", [labels], to=f32), b.i64(-1)]), ones])
        return b.op("Cast", [wide], to=table_type)

    left_lo = b.op("Concat", [b.op("Slice", [top_lo, b.i64(0), b.i64(1), b.i64(2)]), top_lo], "left_lo",
                   axis=2)  # (N, h+1, w+1)
    table = b.op("Gather", [repeat(left_lo), seg_y], "table_rows", axis=1)  # (N, Hm, w+1, Bx)
    table = b.op("Reshape", [table, b.op("Concat", [b.i64(-1), bx], axis=0)])  # (N * Hm * (w+1), Bx)
    copied = b.op("Gather", [left_lo, seg_y], axis=1)  # (N, Hm, w+1): the left labels the copied rows hold
    # one ScatterND writes both (each copies the whole table first): the repeated rows whose left label is not the
    # copied one, except mixed segments, and the mixed segments' pixels
    stale = b.op("And", [b.op("Not", [b.op("Equal", [left, copied])]), b.op("Not", [mixed])])
    fix = b.op("Squeeze", [b.op("NonZero", [b.op("Reshape", [stale, b.i64(-1)])]), b.i64(0)], "fix_idx")
    fixed_rows = repeat(b.op("Gather", [b.op("Reshape", [left, b.i64(-1)]), fix], axis=0))  # (F, Bx)
    rows = b.op("Unsqueeze", [b.op("Concat", [fix, flat_idx], axis=0), b.i64(1)])
    table = b.op("ScatterND", [table, rows, b.op("Concat", [fixed_rows, seg_labels], axis=0)], "table")
    flat = b.op("Reshape", [table, b.op("Concat", [n, hm, b.i64(-1)], axis=0)], "flat")
    # 6. table -> mask columns: a Slice where the pixel map is one run, a Gather otherwise
    offset = b.op("Gather", [pix, b.i64(0)], axis=0)
    contiguous = b.op("Equal", [b.op("Squeeze", [b.op("ReduceSum", [b.op("Abs", [
        b.op("Sub", [pix, b.op("Add", [xs, offset])])]), b.i64(0)], keepdims=1)]), b.const(np.int64(0))])
    then_out = f"{PREFIX}mask_sliced"
    else_out = f"{PREFIX}mask_gathered"
    sliced = helper.make_node("Slice", [flat, offset, b.op("Add", [offset, wm]), b.i64(2)], [then_out],
                              name=b.name("Slice"))
    gathered = helper.make_node("Gather", [flat, pix], [else_out], name=b.name("Gather"), axis=2)
    then_graph = helper.make_graph([sliced], "contiguous", [],
                                   [helper.make_tensor_value_info(then_out, table_type, None)])
    else_graph = helper.make_graph([gathered], "gathered", [],
                                   [helper.make_tensor_value_info(else_out, table_type, None)])
    mask = MASK_OUTPUT if table_type == dtype else b.name("mask_i32")
    b.nodes.append(helper.make_node("If", [contiguous], [mask], name=b.name("If"), then_branch=then_graph,
                                    else_branch=else_graph))
    if mask != MASK_OUTPUT:
        b.op("Cast", [mask], out=MASK_OUTPUT, to=dtype)


def _lerp_t(b: _Builder, top: str, bottom: str, index: str, t: str, hint: str) -> str:
    """Linear interpolation between the rows ``index`` of (R, K) ``top`` and ``bottom`` by the (1, M) weights ``t``,
    as (K, M) columns."""
    lo = b.op("Transpose", [b.op("Gather", [top, index], axis=0)], perm=[1, 0])
    hi = b.op("Transpose", [b.op("Gather", [bottom, index], axis=0)], perm=[1, 0])
    return b.op("Add", [lo, b.op("Mul", [b.op("Sub", [hi, lo]), t])], hint)


def _segments(b: _Builder, n_lo: str, n_hi: str):
    """Half_pixel bilinear segments of one axis, low resolution ``n_lo`` to ``n_hi`` (int64 (1,) tensors), in
    integers so that they are exact: per output index Y, its segment seg(Y) in 0..n_lo (between inputs seg-1 and
    seg, clamped) and the weight t(Y) of the segment's second end; per segment i, its outputs [start_i, end_i)."""
    f32 = TensorProto.FLOAT
    ys = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [n_hi]), b.const(np.int64(1))])
    two = b.op("Mul", [n_hi, b.i64(2)])
    num = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [ys, b.i64(2)]), b.i64(1)]), n_lo]), n_hi])
    seg = b.op("Clip", [b.op("Div", [num, two]), b.const(np.int64(0)), b.op("Squeeze", [n_lo])], "seg_y")
    rem = b.op("Cast", [b.op("Sub", [num, b.op("Mul", [seg, two])])], to=f32)
    t = b.op("Clip", [b.op("Div", [rem, b.op("Cast", [two], to=f32)]), b.const(np.float32(0)),
                      b.const(np.float32(1))], "t_y")
    i = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [b.op("Add", [n_lo, b.i64(1)])]), b.const(np.int64(1))])
    q = b.op("Div", [b.op("Sub", [b.op("Mul", [n_hi, b.op("Add", [b.op("Mul", [i, b.i64(2)]), b.i64(1)])]),
                                  b.i64(1)]), n_lo])
    ends = b.op("Min", [b.op("Div", [b.op("Add", [q, b.i64(1)]), b.i64(2)]), n_hi])
    starts = b.op("Concat", [b.i64(0), b.op("Slice", [ends, b.i64(0), b.i64(-1)])], axis=0)
    return seg, t, starts, ends


def _column_labels(b: _Builder, lt: str, h: str, w: str, k: str, hm: str):
    """argmax of the logits (N, h, w, K) resized vertically to Hm rows, as (N, Hm, w) labels.

    Column j of mask row Y lies on the vertical segment between low-resolution rows i-1 and i (clamped): where
    their argmax agree, so does every row of the segment; where they differ, the two-class crossing weight t*
    decides ("top below t*, bottom above"), as along rows in _refine; only segments where a third class wins
    at t* (rare) interpolate all K logits per row. Returns the labels, the flattened (N * (h+1) * w, K) top and
    bottom end logits of every segment, and per mask row its segment and weight."""
    i64 = TensorProto.INT64
    seg_y, t_y, starts, ends = _segments(b, h, hm)
    end = b.i64(np.iinfo(np.int64).max)
    low = b.op("ArgMax", [lt], "low_labels", axis=3, keepdims=1)  # (N, h, w, 1)

    def ends_of(x):  # (top, bottom) of the h+1 segments: x with its first / last row repeated
        first, last = b.op("Slice", [x, b.i64(0), b.i64(1), b.i64(1)]), b.op("Slice", [x, b.i64(-1), end, b.i64(1)])
        return b.op("Concat", [first, x], axis=1), b.op("Concat", [x, last], axis=1)

    (top, bottom), (top_l, bottom_l) = ends_of(lt), ends_of(low)  # (N, h+1, w, K), (N, h+1, w, 1)
    h1 = b.op("Add", [h, b.i64(1)])
    flat_k = b.op("Concat", [b.i64(-1), k], axis=0)
    top_flat, bottom_flat = b.op("Reshape", [top, flat_k]), b.op("Reshape", [bottom, flat_k])
    # the crossing weight t* of the mixed segments only (Mv of them, flat indices into (N, h+1, w))
    mixed = b.op("Squeeze", [b.op("NonZero", [b.op("Reshape", [b.op("Not", [b.op("Equal", [top_l, bottom_l])]),
                                                               b.i64(-1)])]), b.i64(0)])  # (Mv,)
    a, c = (b.op("Unsqueeze", [b.op("Gather", [b.op("Reshape", [x, b.i64(-1)]), mixed], axis=0), b.i64(1)])
            for x in (top_l, bottom_l))  # (Mv, 1) top and bottom labels
    e_a, e_b = (b.op("Gather", [x, mixed], axis=0) for x in (top_flat, bottom_flat))  # (Mv, K)
    lead_a = b.op("Sub", [b.op("GatherElements", [e_a, a], axis=1), b.op("GatherElements", [e_a, c], axis=1)])
    lead_b = b.op("Sub", [b.op("GatherElements", [e_b, c], axis=1), b.op("GatherElements", [e_b, a], axis=1)])
    cross = b.op("Div", [lead_a, b.op("Add", [lead_a, lead_b])])  # (Mv, 1)
    at_cross = b.op("ArgMax", [b.op("Add", [e_a, b.op("Mul", [b.op("Sub", [e_b, e_a]), cross])])], axis=1,
                    keepdims=1)
    two = b.op("Squeeze", [b.op("Or", [b.op("Equal", [at_cross, a]), b.op("Equal", [at_cross, c])]), b.i64(1)])
    # every row: top, or bottom from t* on (uniform segments: a threshold of 2 that no weight reaches)
    grid = b.op("Shape", [b.op("Squeeze", [top_l, b.i64(3)])])  # (N, h+1, w)
    threshold = b.op("ConstantOfShape", [b.op("ReduceProd", [grid], keepdims=1)],
                     value=numpy_helper.from_array(np.full(1, 2, np.float32)))
    threshold = b.op("ScatterND", [threshold, b.op("Unsqueeze", [mixed, b.i64(1)]), b.op("Squeeze", [cross, b.i64(1)])])
    squeeze = b.i64(3)
    top_rows, bottom_rows = (b.op("Gather", [b.op("Squeeze", [x, squeeze]), seg_y], axis=1) for x in (top_l, bottom_l))
    thr_rows = b.op("Gather", [b.op("Reshape", [threshold, grid]), seg_y], axis=1)  # (N, Hm, w): whole-row copies
    step = b.op("Cast", [b.op("GreaterOrEqual", [b.op("Unsqueeze", [t_y, b.i64(1)]), thr_rows])], to=i64)
    labels = b.op("Add", [top_rows, b.op("Mul", [b.op("Sub", [bottom_rows, top_rows]), step])])
    # rare segments with rows (downsampling leaves some segments without any): per row, all K logits
    filled = b.op("Greater", [ends, starts])  # (h+1,)
    m_row = b.op("Div", [mixed, w])
    m_i = b.op("Sub", [m_row, b.op("Mul", [b.op("Div", [m_row, h1]), h1])])
    rare = b.op("Squeeze", [b.op("NonZero", [b.op("And", [b.op("Not", [two]), b.op("Gather", [filled, m_i], axis=0)])]),
                            b.i64(0)])
    rare = b.op("Gather", [mixed, rare], axis=0)  # (R,) flat indices into (N, h+1, w)
    seg_row = b.op("Div", [rare, w])  # n * (h+1) + i
    col = b.op("Sub", [rare, b.op("Mul", [seg_row, w])])
    image = b.op("Div", [seg_row, h1])
    i = b.op("Sub", [seg_row, b.op("Mul", [image, h1])])
    first, last = b.op("Gather", [starts, i], axis=0), b.op("Sub", [b.op("Gather", [ends, i], axis=0), b.i64(1)])
    length = b.reduce_max(b.op("Concat", [b.op("Sub", [ends, starts]), b.i64(0)], axis=0))
    slots = b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [length]), b.const(np.int64(1))])
    ys = b.op("Min", [b.op("Add", [b.op("Unsqueeze", [first, b.i64(1)]), slots]),
                      b.op("Unsqueeze", [last, b.i64(1)])])  # (R, L) rows, the segment's last one repeated
    t = b.op("Unsqueeze", [b.op("Gather", [t_y, ys], axis=0), b.i64(2)])  # (R, L, 1)
    lo = b.op("Unsqueeze", [b.op("Gather", [top_flat, rare], axis=0), b.i64(1)])  # (R, 1, K)
    hi = b.op("Unsqueeze", [b.op("Gather", [bottom_flat, rare], axis=0), b.i64(1)])
    rare_labels = b.op("ArgMax", [b.op("Add", [lo, b.op("Mul", [b.op("Sub", [hi, lo]), t])])], axis=2, keepdims=0)
    at = b.op("Add", [b.op("Mul", [b.op("Add", [b.op("Mul", [b.op("Unsqueeze", [image, b.i64(1)]), hm]), ys]), w]),
                      b.op("Unsqueeze", [col, b.i64(1)])])  # (R, L) flat (N * Hm * w) positions; repeats agree
    flat = b.op("ScatterND", [b.op("Reshape", [labels, b.i64(-1)]), b.op("Unsqueeze", [at, b.i64(2)]), rare_labels])
    col_labels = b.op("Reshape", [flat, b.op("Shape", [labels])], "col_labels")
    return col_labels, top_flat, bottom_flat, seg_y, t_y, b.op("Squeeze", [top_l, b.i64(3)], "top_labels")


# ---------------------------------------------------------------------------------------- back to logits


def network_of(frame_model: onnx.ModelProto) -> onnx.ModelProto:
    """The logits-form network inside a frame-form model (its nodes, initializers, functions and metadata)."""
    raw = _raw_metadata(frame_model)
    extra = raw.get("extra") or {}
    if raw.get("form") != "frame" or "network_input" not in extra or "network_output" not in extra:
        raise ExportError("the model is not a segrt frame-form graph (no form 'frame' / network_input / "
                          "network_output in its metadata)")
    net_in, net_out = extra["network_input"], extra["network_output"]
    result = copy.deepcopy(frame_model)
    graph = result.graph
    described = {v.name: v for v in graph.value_info}
    if net_in not in described or net_out not in described:
        raise ExportError(f"the frame-form graph does not describe its network's tensors {net_in!r}/{net_out!r}")
    keep = [n for n in graph.node if not n.name.startswith(PREFIX)]
    inits = [i for i in graph.initializer if not i.name.startswith(PREFIX)]
    values = [v for v in graph.value_info if v.name not in (net_in, net_out) and not v.name.startswith(PREFIX)]
    inp, out = copy.deepcopy(described[net_in]), copy.deepcopy(described[net_out])
    del graph.node[:], graph.initializer[:], graph.value_info[:], graph.input[:], graph.output[:]
    graph.node.extend(keep)
    graph.initializer.extend(inits)
    graph.value_info.extend(values)
    graph.input.append(inp)
    graph.output.append(out)
    network_meta = extra.get("network_metadata")
    for p in result.metadata_props:
        if p.key == METADATA_KEY and network_meta:
            p.value = network_meta
    return result


# ---------------------------------------------------------------------------------------- verification

MIN_AGREEMENT = 0.995  # the contract's pixel agreement with the float reference path


def reference_masks(logits_session, frames: Sequence[np.ndarray], metadata: ModelMetadata,
                    output_stride: int = 1) -> list[np.ndarray]:
    """What the float reference path (runtime/preprocess.py) makes of ``frames`` with the logits-form model
    (an ONNX Runtime session): one mask per frame at ceil(frame size / output_stride)."""
    from segrt.runtime.preprocess import frames_to_input, logits_to_mask

    name = logits_session.get_inputs()[0].name
    masks = []
    for frame in frames:
        x = frames_to_input([frame], metadata.input_size, metadata.mean, metadata.std)
        logits = logits_session.run(None, {name: x})[0][0].astype(np.float32)
        size = (-(-frame.shape[0] // output_stride), -(-frame.shape[1] // output_stride))
        masks.append(logits_to_mask(logits, size))
    return masks


def frame_agreement(frame_model: onnx.ModelProto | bytes, logits_model: onnx.ModelProto | bytes,
                    frames: Sequence[np.ndarray], batch: int = 1) -> list[float]:
    """Per-frame share of mask pixels where the frame-form graph agrees with the reference path run on the
    logits-form model, both in ONNX Runtime (CPU). Frames are run ``batch`` at a time (all of one size)."""
    import onnxruntime as ort

    def session(model):
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    logits_proto = logits_model if isinstance(logits_model, onnx.ModelProto) else onnx.load_from_string(logits_model)
    frame_proto = frame_model if isinstance(frame_model, onnx.ModelProto) else onnx.load_from_string(frame_model)
    meta = ModelMetadata.from_onnx(logits_proto)
    stride = int(json.loads(next(p.value for p in frame_proto.metadata_props if p.key == METADATA_KEY))
                 .get("output_stride", 1))
    if meta is None:
        raise ExportError("the logits-form model carries no segrt metadata")
    expected = reference_masks(session(logits_proto), frames, meta, stride)
    graph = session(frame_proto)
    agreement = []
    for start in range(0, len(frames), batch):
        chunk = np.stack([np.ascontiguousarray(f) for f in frames[start:start + batch]])
        masks = graph.run(None, {FRAME_INPUT: chunk})[0]
        for mask, want in zip(masks, expected[start:start + batch]):
            if mask.shape != want.shape:
                raise ExportError(f"the frame-form graph returned a {mask.shape} mask; the reference is {want.shape}")
            agreement.append(float((mask.astype(np.int64) == want.astype(np.int64)).mean()))
    return agreement


SECOND_SIZE = (720, 1280)  # a dynamic frame input is also verified at this camera size


def verification_sizes(frames: Sequence[np.ndarray], frame_size: tuple[int, int] | None) -> list[list[np.ndarray]]:
    """Frame sets to verify a frame-form graph on: the fixed camera size, or (any size) the frames' own sizes
    and a second, larger camera size."""
    import cv2

    def at(size):
        return [f if f.shape[:2] == tuple(size) else cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                for f in frames]

    if frame_size is not None:
        return [at(frame_size)]
    return [list(frames), at(SECOND_SIZE)]


def wrap_verified(logits_model: onnx.ModelProto, frames: Sequence[np.ndarray], *,
                  frame_size: tuple[int, int] | None = None, output_stride: int = 1, post: str = "refine",
                  mask_int32: bool = False, pre: str = "exact",
                  min_agreement: float = MIN_AGREEMENT) -> tuple[onnx.ModelProto, float]:
    """:func:`to_frame_form`, then the frame graph checked against the float reference path on real frames;
    returns (frame model, worst per-frame agreement). Raises ExportVerificationError below ``min_agreement``."""
    from segrt.runtime.errors import ExportVerificationError

    if not frames:
        raise ExportError("frame-form verification needs at least one real frame")
    frame_model = to_frame_form(logits_model, frame_size=frame_size, output_stride=output_stride, post=post,
                                mask_int32=mask_int32, pre=pre)
    frame_bytes, logits_bytes = frame_model.SerializeToString(), logits_model.SerializeToString()
    worst = 1.0
    for chunk in verification_sizes(frames, frame_size):
        worst = min(worst, *frame_agreement(frame_bytes, logits_bytes, chunk))
    if worst < min_agreement:
        raise ExportVerificationError(
            f"the frame-form graph ({pre} pre, {post} post) agrees with the reference path (cv2 resize, logits, "
            f"bilinear upsampling, argmax) on only {worst:.4%} of mask pixels (< {min_agreement:.2%}) on "
            f"{len(frames)} real frames")
    return frame_model, worst


def wrap_file(source, out, frames: Sequence[np.ndarray], **options) -> float:
    """:func:`wrap_verified` of the logits-form ONNX file ``source``, written atomically to ``out`` (which may be
    ``source``); returns the worst agreement. ``options`` are those of :func:`to_frame_form`."""
    import io

    from segrt.runtime import sinks

    try:
        logits_model = onnx.load(str(source))
    except Exception as exc:  # a truncated or foreign file
        raise ExportError(f"cannot read {source} as ONNX: {exc}") from exc
    frame_model, agreement = wrap_verified(logits_model, frames, **options)
    buf = io.BytesIO()
    onnx.save_model(frame_model, buf)
    sinks.write_bytes(out, buf.getvalue(), "ONNX model")
    return agreement
