"""What a segrt model carries with it: classes, palette, input size, normalisation, provenance.

The same record travels in safetensors checkpoints (``__metadata__``), ONNX ``metadata_props`` and
TensorRT engine manifests, so that a runtime needs no side files. This module is the one owner of its
format: :meth:`ModelMetadata.to_json` / :meth:`ModelMetadata.from_json` (and ``to_onnx`` / ``from_onnx``
for ONNX ``metadata_props``) are the only code that writes or reads it.

A model file may come from anyone, so every field is checked for its type and range when a record is
built (:class:`ModelLoadError` naming the field), and :func:`check_against_io` checks the record against
the graph it describes before the runtime trusts it. Documented bounds:

- ``classes``: 1 to :data:`MAX_CLASSES` printable names; masks are uint8 up to 256 classes, uint16 above
  (:attr:`ModelMetadata.mask_dtype`), so a label is never wrapped;
- ``input_size``: ``null`` or left out (any size; a static graph's own) or ``[H, W]`` with each side in
  1..:data:`MAX_INPUT_SIDE` and at most :data:`MAX_INPUT_PIXELS` in all (the frame bounds), equal to the
  graph's input where that is static;
- ``mean`` / ``std``: three finite numbers each, ``std`` > 0;
- ``palette``: one ``[R, G, B]`` of ints in 0..255 per class (empty: a default palette);
- ``output``: one of :data:`OUTPUT_KINDS`: ``logits`` or ``labels`` with form ``tensor``, ``mask`` with form
  ``frame``;
- ``form``: one of :data:`FORMS` (left out: ``tensor``). ``tensor``: the graph takes float32 (N, 3, H, W)
  normalised RGB and the runtime resizes, normalises, upsamples and takes the argmax. ``frame``: the graph
  takes the camera's uint8 (N, H, W, 3) BGR frame and returns the (N, Hm, Wm) integer mask itself
  (uint8, uint16 or int32); ``input_size`` is then the network size the graph resizes to (None: the
  network runs at the frame's size) and mean/std describe what the graph applies inside;
- ``frame_size``: ``null`` or left out (frames of any size; a static graph's own) or ``[H, W]`` of a
  fixed-size frame input, bounded like ``input_size``; only with form ``frame``;
- ``output_stride``: an int in 1..:data:`MAX_OUTPUT_STRIDE` (left out: 1); a frame-form mask is
  (ceil(H / s), ceil(W / s)) for an HxW frame; only 1 with form ``tensor``.

Unknown keys are ignored, so newer files stay readable by older runtimes (and a frame-form file is refused
by a runtime that predates it: its ``output`` ``mask`` is not one that runtime knows).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np

from segrt.runtime.errors import BackendError, ModelLoadError
from segrt.runtime.frames import MAX_PIXELS, MAX_SIDE
from segrt.runtime.preprocess import mask_dtype

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METADATA_KEY = "segrt"  # the ONNX metadata_props key

FORMS = ("tensor", "frame")  # float32 NCHW in (runtime pre/post) | uint8 NHWC frame in, mask out (in-graph)
OUTPUT_KINDS = ("logits", "labels", "mask")  # logits (N, K, h, w) float; labels (N, h, w); mask (N, Hm, Wm)
FORM_OUTPUTS = {"tensor": ("logits", "labels"), "frame": ("mask",)}
MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32))  # a frame-form graph's mask output
MAX_OUTPUT_STRIDE = 64
# A network input is never larger than the largest frame segrt accepts (frames.py): a 60000x60000
# declaration is refused at load instead of allocating gigabytes at the first infer.
MAX_INPUT_SIDE = MAX_SIDE
MAX_INPUT_PIXELS = MAX_PIXELS
MAX_CLASSES = 65536  # uint16 masks
MAX_CLASS_NAME = 256  # characters


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct RGB colours for ``n`` classes (the PASCAL VOC bit-interleaving scheme)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


# ---------------------------------------------------------------------------------------- field checks
# Each takes the raw value (from JSON or from Python) and returns the normalised one, or raises
# ModelLoadError naming the field. bool is an int subclass in Python and is refused where a number is meant.


def _bad(name: str, problem: str) -> ModelLoadError:
    return ModelLoadError(f"segrt metadata field {name!r} {problem}")


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def _sequence(name: str, value: object) -> Sequence[Any]:
    # str and bytes are sequences too; "512x512" must not become ("5", "1", ...)
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, (Sequence, np.ndarray)):
        raise _bad(name, f"must be a list, got {type(value).__name__} {_short(value)}")
    return value.tolist() if isinstance(value, np.ndarray) else value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_classes(value: object) -> list[str]:
    items = _sequence("classes", value)
    if not 1 <= len(items) <= MAX_CLASSES:
        raise _bad("classes", f"must name 1 to {MAX_CLASSES} classes, got {len(items)}")
    for i, name in enumerate(items):
        if not isinstance(name, str):
            raise _bad("classes", f"entry {i} must be a string, got {type(name).__name__} {_short(name)}")
        if len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise _bad("classes", f"entry {i} must be printable text of at most {MAX_CLASS_NAME} characters, "
                                  f"got {_short(name)}")
    return list(items)


def _check_palette(value: object, num_classes: int) -> list[tuple[int, int, int]]:
    if value is None:
        return default_palette(num_classes)
    items = _sequence("palette", value)
    if len(items) == 0:
        return default_palette(num_classes)
    if len(items) != num_classes:
        raise _bad("palette", f"has {len(items)} colours for {num_classes} classes; expected one per class")
    palette = []
    for i, colour in enumerate(items):
        is_list = isinstance(colour, (Sequence, np.ndarray)) and not isinstance(colour, (str, bytes, bytearray))
        rgb: Sequence[Any] = colour if is_list else ()  # type: ignore[assignment]
        if len(rgb) != 3 or not all(_is_int(v) and 0 <= v <= 255 for v in rgb):
            raise _bad("palette", f"entry {i} must be three integers in 0..255 (R, G, B), got {_short(colour)}")
        palette.append((int(rgb[0]), int(rgb[1]), int(rgb[2])))
    return palette


def _check_size(value: object, name: str = "input_size") -> tuple[int, int] | None:
    if value is None:
        return None
    items = _sequence(name, value)
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise _bad(name, f"must be null or [height, width] integers, got {_short(value)}")
    h, w = int(items[0]), int(items[1])
    if not (1 <= h <= MAX_INPUT_SIDE and 1 <= w <= MAX_INPUT_SIDE) or h * w > MAX_INPUT_PIXELS:
        raise _bad(name, f"{h}x{w} is outside 1..{MAX_INPUT_SIDE} pixels per side and "
                         f"{MAX_INPUT_PIXELS} pixels in all")
    return h, w


def _check_input_size(value: object) -> tuple[int, int] | None:
    return _check_size(value, "input_size")


# Pixel statistics for either pixel scale (0..255 or 0..1), far from float32's limits.
MEAN_LIMIT = 1e4
STD_RANGE = (1e-4, 1e4)


def _check_triple(name: str, value: object, positive: bool) -> tuple[float, float, float]:
    items = _sequence(name, value)
    if len(items) != 3 or not all(_is_number(v) for v in items):
        raise _bad(name, f"must be three numbers (R, G, B), got {_short(value)}")
    try:
        triple = tuple(float(v) for v in items)
    except OverflowError:  # a JSON integer of hundreds of digits
        raise _bad(name, f"must be finite, got {_short(value)}") from None
    if not all(math.isfinite(v) for v in triple):
        raise _bad(name, f"must be finite, got {triple}")
    if positive and not all(v > 0 for v in triple):
        raise _bad(name, f"must be greater than 0 (it divides the pixels), got {triple}")
    # Frames are normalised in float32: values that are finite here can still overflow or vanish there
    # (std 1e-300 -> 0, std 1e39 -> inf) and give one class everywhere without any error.
    low, high = (STD_RANGE if positive else (-MEAN_LIMIT, MEAN_LIMIT))
    if not all(low <= v <= high for v in triple):
        raise _bad(name, f"must lie in [{low:g}, {high:g}] (pixel statistics, normalised in float32), got {triple}")
    return triple  # type: ignore[return-value]


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(name, f"must be a string, got {type(value).__name__} {_short(value)}")
    return value


def _check_form(value: object) -> str:
    if not isinstance(value, str) or value not in FORMS:
        raise _bad("form", f"must be one of {', '.join(FORMS)}, got {_short(value)}")
    return value


def _check_output(value: object, form: str) -> str:
    if not isinstance(value, str) or value not in OUTPUT_KINDS:
        raise _bad("output", f"must be one of {', '.join(OUTPUT_KINDS)}, got {_short(value)}")
    if value not in FORM_OUTPUTS[form]:
        raise _bad("output", f"is {value!r} but form {form!r} models return "
                             f"{' or '.join(map(repr, FORM_OUTPUTS[form]))}")
    return value


def _check_stride(value: object, form: str) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_OUTPUT_STRIDE:  # type: ignore[operator]
        raise _bad("output_stride", f"must be an integer in 1..{MAX_OUTPUT_STRIDE}, got {_short(value)}")
    if form != "frame" and value != 1:
        raise _bad("output_stride", f"is {value} but only form 'frame' models return masks below the frame's size")
    return int(value)  # type: ignore[call-overload]


def _check_extra(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _bad("extra", f"must be an object of strings, got {type(value).__name__} {_short(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _bad("extra", f"entry {_short(key)} must map a string to a string, got {type(item).__name__}")
    return dict(value)


# ---------------------------------------------------------------------------------------- the record


@dataclass
class ModelMetadata:
    classes: list[str]
    palette: list[tuple[int, int, int]] = field(default_factory=list)  # RGB per class
    input_size: tuple[int, int] | None = (512, 512)  # (H, W); None means any size (dynamic export)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, on [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD
    output: str = ""  # "logits" (B,K,h,w) or "labels" (B,h,w) (form "tensor"), "mask" (form "frame"); "": by form
    segrt_version: str = ""
    source_sha256: str = ""
    source: str = ""
    architecture: str = ""  # SegFormerConfig JSON, so a graph can be traced back to its model
    extra: dict[str, str] = field(default_factory=dict)
    form: str = "tensor"  # see FORMS
    frame_size: tuple[int, int] | None = None  # (H, W) of a fixed-size frame input (form "frame"); None: any size
    output_stride: int = 1  # a frame-form mask is (ceil(H / s), ceil(W / s))

    def __post_init__(self) -> None:
        self.classes = _check_classes(self.classes)
        self.palette = _check_palette(self.palette, len(self.classes))
        self.input_size = _check_input_size(self.input_size)
        self.mean = _check_triple("mean", self.mean, positive=False)
        self.std = _check_triple("std", self.std, positive=True)
        self.form = _check_form(self.form)
        if self.output == "":  # left to the form: what each form returns by default
            self.output = FORM_OUTPUTS[self.form][0]
        self.output = _check_output(self.output, self.form)
        self.frame_size = _check_size(self.frame_size, "frame_size")
        if self.frame_size is not None and self.form != "frame":
            raise _bad("frame_size", f"is {self.frame_size} but only form 'frame' models take frames")
        self.output_stride = _check_stride(self.output_stride, self.form)
        for name in ("segrt_version", "source_sha256", "source", "architecture"):
            setattr(self, name, _check_text(name, getattr(self, name)))
        self.extra = _check_extra(self.extra)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mask_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every label: uint8 up to 256 classes, else uint16."""
        return np.dtype(mask_dtype(self.num_classes))  # the rule is preprocess.mask_dtype's

    def mask_size(self, frame_hw: tuple[int, int]) -> tuple[int, int]:
        """(Hm, Wm) of the mask for an (H, W) frame: the frame's size, or ceil(H / s) x ceil(W / s) for a
        frame-form model with output stride s."""
        return mask_size(frame_hw, self.output_stride)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: object) -> ModelMetadata:
        """A record from decoded JSON: an object with at least ``classes``; unknown keys are ignored."""
        if not isinstance(raw, Mapping):
            raise ModelLoadError(f"segrt metadata must be a JSON object, got {type(raw).__name__} {_short(raw)}")
        if "classes" not in raw:
            raise _bad("classes", "is missing")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in raw.items() if k in known}
        # A record that leaves input_size out declares no size: a static graph supplies its own (as it always
        # did) instead of contradicting a 512x512 default, and a dynamic graph runs frames at their size.
        fields.setdefault("input_size", None)
        return cls(**fields)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelLoadError(f"segrt metadata is not UTF-8 text: {exc}") from exc
        if not isinstance(text, str):
            raise ModelLoadError(f"segrt metadata must be JSON text, got {type(text).__name__}")
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise ModelLoadError(f"segrt metadata is not valid JSON: {str(exc)[:200]}") from exc
        return cls.from_dict(raw)

    # ------------------------------------------------------------------ ONNX metadata_props
    def to_onnx(self, model: Any) -> None:
        """Store this record in an ONNX ModelProto's ``metadata_props``, replacing a previous segrt entry in
        place (other entries and their order are kept)."""
        props = model.metadata_props
        matches = [p for p in props if p.key == METADATA_KEY]
        if not matches:
            props.add(key=METADATA_KEY, value=self.to_json())
            return
        matches[0].value = self.to_json()
        for extra in matches[1:]:
            props.remove(extra)

    @classmethod
    def from_onnx(cls, source: Any) -> ModelMetadata | None:
        """The record in an ONNX ModelProto (or its ``metadata_props``, or ONNX Runtime's
        ``custom_metadata_map``); None when the model carries no segrt metadata."""
        props = getattr(source, "metadata_props", source)
        if isinstance(props, Mapping):
            text = props.get(METADATA_KEY)
            return None if text is None else cls.from_json(text)
        values = [p.value for p in _iter_props(props) if p.key == METADATA_KEY]
        if len(values) > 1:
            raise ModelLoadError(f"the model has {len(values)} segrt metadata entries; expected one")
        return cls.from_json(values[0]) if values else None


def _iter_props(props: Iterable[Any]) -> Iterable[Any]:
    try:
        yield from props
    except UnicodeDecodeError as exc:  # protobuf decodes string fields lazily on some builds
        raise ModelLoadError(f"the model's metadata_props are not UTF-8 text: {exc}") from exc


# ---------------------------------------------------------------------------------------- against the graph

Shape = Sequence["int | None"]


def mask_size(frame_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(ceil(H / s), ceil(W / s)): the mask size of an (H, W) frame at output stride ``s``."""
    return -(-int(frame_hw[0]) // stride), -(-int(frame_hw[1]) // stride)


def _dtype_name(dtype: np.dtype | None) -> str:
    return "unknown" if dtype is None else str(dtype)


def check_against_io(metadata: ModelMetadata, input_shape: Shape, output_shape: Shape | None,
                     output_dtype: np.dtype | None, source: object = "model", *,
                     input_dtype: np.dtype | None = None) -> ModelMetadata:
    """Refuse a record that does not describe the graph it travels with; returns the record to use.

    ``input_shape`` is the graph input's shape in its own layout, (N, 3, H, W) for form ``tensor`` and
    (N, H, W, 3) for form ``frame``, and ``output_shape`` the output's shape, with None for dynamic
    dimensions (``output_shape`` None: rank unknown); ``input_dtype`` and ``output_dtype`` None when unknown.
    Backends call this at load, before any buffer is allocated, and the TensorRT backend reuses it with its
    engine's I/O. The returned record has ``input_size`` (tensor form) or ``frame_size`` (frame form) taken
    from a static graph when the metadata left it open.
    """
    where = f"{source}: "
    if input_dtype is not None:
        _check_input_dtype(metadata, np.dtype(input_dtype), input_shape, where)
    if metadata.form == "frame":
        metadata = _check_frame_input(metadata, input_shape, where)
    else:
        metadata = _check_tensor_input(metadata, input_shape, where)
    if output_shape is not None:
        _check_output_shape(metadata, tuple(output_shape), where)
        if metadata.form == "frame":
            _check_mask_size(metadata, tuple(input_shape), tuple(output_shape), where)
    if output_dtype is not None:
        _check_output_dtype(metadata, np.dtype(output_dtype), where)
    return metadata


def _check_input_dtype(metadata: ModelMetadata, dtype: np.dtype, shape: Shape, where: str) -> None:
    want = np.dtype(np.uint8) if metadata.form == "frame" else np.dtype(np.float32)
    if dtype != want:
        layout = "uint8 (N, H, W, 3) BGR frames" if metadata.form == "frame" else "float32 (N, 3, H, W) tensors"
        raise _bad("form", f"is {metadata.form!r} ({layout}) but the graph's input is {dtype} {tuple(shape)} "
                           f"({where.rstrip(': ')}); a model's metadata must say the form its graph was exported in")


def _check_sides(h: int | None, w: int | None, where: str) -> None:
    for name, dim in (("height", h), ("width", w)):
        if dim is not None and not 1 <= dim <= MAX_INPUT_SIDE:
            raise ModelLoadError(f"{where}input {name} {dim} is outside 1..{MAX_INPUT_SIDE} pixels")
    if h is not None and w is not None and h * w > MAX_INPUT_PIXELS:
        raise ModelLoadError(f"{where}input {h}x{w} is more than {MAX_INPUT_PIXELS} pixels")


def _check_declared(name: str, declared: tuple[int, int] | None, h: int | None, w: int | None, where: str) -> None:
    if declared is not None and any(dim is not None and dim != want for dim, want in zip((h, w), declared)):
        fixed = "x".join("?" if d is None else str(d) for d in (h, w))
        raise _bad(name, f"is {declared[0]}x{declared[1]} but the graph's input is fixed at {fixed} "
                         f"({where.rstrip(': ')})")


def _check_batch(input_shape: Shape, where: str) -> None:
    if input_shape[0] is not None and input_shape[0] < 1:
        raise ModelLoadError(f"{where}input batch dimension {input_shape[0]} is not positive")


def _check_tensor_input(metadata: ModelMetadata, input_shape: Shape, where: str) -> ModelMetadata:
    if len(input_shape) != 4 or input_shape[1] not in (3, None):
        hint = " (an (N, H, W, 3) input is a frame-form graph: its metadata must say form 'frame')" \
            if len(input_shape) == 4 and input_shape[3] == 3 else ""
        raise ModelLoadError(f"{where}input shape {tuple(input_shape)} is not (N, 3, H, W){hint}")
    return _checked_size(metadata, "input_size", input_shape, input_shape[2], input_shape[3], where)


def _check_frame_input(metadata: ModelMetadata, input_shape: Shape, where: str) -> ModelMetadata:
    # The channel dimension must be a static 3: with it dynamic an (N, 3, H, W) graph would pass as frames.
    if len(input_shape) != 4 or input_shape[3] != 3:
        raise _bad("form", f"is 'frame' but the graph's input shape {tuple(input_shape)} is not (N, H, W, 3) "
                           f"({where.rstrip(': ')})")
    return _checked_size(metadata, "frame_size", input_shape, input_shape[1], input_shape[2], where)


def _checked_size(metadata: ModelMetadata, field: str, input_shape: Shape, h: int | None, w: int | None,
                  where: str) -> ModelMetadata:
    """The graph's batch and (h, w) checked against the metadata's ``field`` (input_size or frame_size); a
    static graph fills in a field the record left open."""
    _check_batch(input_shape, where)
    _check_sides(h, w, where)
    _check_declared(field, getattr(metadata, field), h, w, where)
    if getattr(metadata, field) is None and h is not None and w is not None:
        filled: dict[str, Any] = {field: (h, w)}
        metadata = dataclasses.replace(metadata, **filled)
    return metadata


def _check_mask_size(metadata: ModelMetadata, input_shape: tuple[int | None, ...],
                     output_shape: tuple[int | None, ...], where: str) -> None:
    """A static mask side must be ceil(side / stride) of the frame side it comes from (static or declared)."""
    frame_hw = list(input_shape[1:3])
    if metadata.frame_size is not None:
        frame_hw = [d if d is not None else f for d, f in zip(frame_hw, metadata.frame_size)]
    n_in, n_out = input_shape[0], output_shape[0]
    if n_in is not None and n_out is not None and n_in != n_out:
        raise ModelLoadError(f"{where}the graph returns {n_out} masks for a batch of {n_in} frames")
    for name, side, got in zip(("height", "width"), frame_hw, output_shape[1:3]):
        if side is not None and got is not None and got != -(-side // metadata.output_stride):
            raise _bad("output_stride", f"is {metadata.output_stride} but the graph's mask {name} is {got} for a "
                                        f"frame {name} of {side} (expected {-(-side // metadata.output_stride)}; "
                                        f"{where.rstrip(': ')})")


def _check_output_shape(metadata: ModelMetadata, shape: tuple[int | None, ...], where: str) -> None:
    if metadata.output == "mask":
        if len(shape) != 3:
            raise _bad("output", f"is 'mask' but the graph returns shape {shape}; masks are (N, Hm, Wm) "
                                 f"({where.rstrip(': ')})")
        return
    if metadata.output == "labels":
        if not (len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)):
            raise _bad("output", f"is 'labels' but the graph returns shape {shape}; labels are (N, h, w) "
                                 f"or (N, 1, h, w) ({where.rstrip(': ')})")
        return
    if len(shape) != 4:
        raise _bad("output", f"is 'logits' but the graph returns shape {shape}; logits are (N, K, h, w) "
                             f"({where.rstrip(': ')})")
    k = shape[1]
    if k is not None and k != metadata.num_classes:
        raise _bad("classes", f"names {metadata.num_classes} classes but the graph returns {k} channels "
                              f"({where.rstrip(': ')})")


def _check_output_dtype(metadata: ModelMetadata, dtype: np.dtype, where: str) -> None:
    if metadata.output == "mask" and dtype not in MASK_DTYPES:
        raise _bad("output", f"is 'mask' but the graph returns {dtype}; masks are "
                             f"{', '.join(map(str, MASK_DTYPES))} ({where.rstrip(': ')})")
    if metadata.output in ("labels", "mask"):
        if dtype.kind not in "iu":
            raise _bad("output", f"is {metadata.output!r} but the graph returns {dtype}; labels are integers "
                                 f"({where.rstrip(': ')})")
        if np.iinfo(dtype).max < metadata.num_classes - 1:
            raise _bad("classes", f"names {metadata.num_classes} classes but the graph's {dtype} labels stop at "
                                  f"{np.iinfo(dtype).max} ({where.rstrip(': ')})")
        return
    if dtype.kind != "f":
        raise _bad("output", f"is 'logits' but the graph returns {dtype}; logits are floating point "
                             f"({where.rstrip(': ')})")


def check_output(metadata: ModelMetadata, out: np.ndarray, batch: int, source: object = "model", *,
                 frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """What a backend returned, checked against the record before masks are made of it (dynamic graphs
    declare no output shape at load); labels come back as (N, h, w).

    Frame form: ``frame_hw`` is the (H, W) of the frames run; the mask must be (batch, ceil(H / s),
    ceil(W / s)) integers below the class count, and comes back in :attr:`ModelMetadata.mask_dtype` (a
    TensorRT graph's int32 mask as uint16). A mask that breaks any of this raises :class:`BackendError`.
    """
    if metadata.form == "frame":
        return _check_mask(metadata, out, batch, frame_hw, source)
    where = f"{source}: "
    _check_output_dtype(metadata, out.dtype, where)
    _check_output_shape(metadata, out.shape, where)
    if out.shape[0] != batch or any(d < 1 for d in out.shape):
        raise ModelLoadError(f"{where}the graph returned shape {out.shape} for a batch of {batch}")
    if metadata.output == "labels" and out.ndim == 4:
        out = out[:, 0]
    return out


def _check_mask(metadata: ModelMetadata, out: object, batch: int, frame_hw: tuple[int, int] | None,
                source: object) -> np.ndarray:
    k = metadata.num_classes
    if not isinstance(out, np.ndarray):
        raise BackendError(f"{source}: the graph returned {type(out).__name__}, not a mask array")
    if out.dtype not in MASK_DTYPES:
        raise BackendError(f"{source}: the graph returned a {out.dtype} mask; expected "
                           f"{', '.join(map(str, MASK_DTYPES))}")
    want = (batch, *mask_size(frame_hw, metadata.output_stride)) if frame_hw is not None else None
    if out.ndim != 3 or out.shape[0] != batch or (want is not None and out.shape != want) or 0 in out.shape:
        expected = want if want is not None else f"({batch}, Hm, Wm)"
        raise BackendError(f"{source}: the graph returned a mask of shape {out.shape} for a batch of {batch} frames "
                           f"of {'?' if frame_hw is None else f'{frame_hw[0]}x{frame_hw[1]}'}; expected {expected}")
    if np.iinfo(out.dtype).max >= k:  # a cheap max (and min for int32): a label the classes do not name
        low, high = (int(out.min()) if out.dtype.kind == "i" else 0), int(out.max())
        if low < 0 or high >= k:
            raise BackendError(f"{source}: the graph returned label {low if low < 0 else high}, outside "
                               f"0..{k - 1} for its {k} classes")
    return out if out.dtype == metadata.mask_dtype else out.astype(metadata.mask_dtype)
