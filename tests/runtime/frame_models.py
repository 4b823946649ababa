"""Tiny frame-form ONNX models built with onnx.helper (no torch): uint8 (N, H, W, 3) BGR frame in, (N, Hm, Wm)
mask out, with the pre and post-processing of the frame-to-mask contract inside the graph.

The network is the 1x1-convolution "pixel model" of :mod:`tiny_models` (class k's logit is ``W[k] . rgb +
b[k]``, rgb on [0, 1]), so the same weights in the tensor form give the reference path to compare with.
Graph: Cast to float -> NCHW -> [Resize to ``input_size``] -> BGR to RGB -> normalise -> Conv -> Resize
of the logits to (ceil(H / s), ceil(W / s)) -> ArgMax -> Cast to the mask dtype (+ ``lie``, a constant a
broken graph adds to every label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tiny_models import PIXEL_BIAS, PIXEL_WEIGHTS

from segrt.runtime.metadata import ModelMetadata

MASK_TYPES = {np.uint8: TensorProto.UINT8, np.uint16: TensorProto.UINT16, np.int32: TensorProto.INT32,
              np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT}


def frame_graph(weights: np.ndarray = PIXEL_WEIGHTS, bias: np.ndarray = PIXEL_BIAS, *,
                input_size: tuple[int, int] | None = None, frame_hw: tuple[int, int] | None = None,
                stride: int = 1, mask_dtype: type = np.uint8, lie: int = 0, batch: int | str = "N",
                stride_in_graph: int | None = None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> onnx.ModelProto:
    """The frame-form pixel model. ``stride_in_graph`` (default ``stride``) is the stride the graph really uses:
    a different value makes a graph whose masks contradict its metadata."""
    k = len(weights)
    s = stride if stride_in_graph is None else stride_in_graph
    h, w = frame_hw if frame_hw else ("H", "W")
    mask_hw = (-(-h // s), -(-w // s)) if frame_hw else ("Hm", "Wm")
    c = []  # initializers

    def const(name: str, value) -> str:
        c.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    for name, value in (("z", 0), ("one", 1), ("two", 2), ("three", 3)):
        const(name, np.array([value], np.int64))
    nodes = [helper.make_node("Cast", ["frame"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2])]
    x = "nchw"
    if input_size is not None:
        nodes += [helper.make_node("Shape", ["nchw"], ["in_shape"]),
                  helper.make_node("Slice", ["in_shape", "z", "two"], ["nc"]),
                  helper.make_node("Concat", ["nc", const("net_hw", np.array(input_size, np.int64))], ["net_sizes"],
                                   axis=0),
                  helper.make_node("Resize", ["nchw", "", "", "net_sizes"], ["resized"], mode="linear",
                                   coordinate_transformation_mode="half_pixel")]
        x = "resized"
    scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    offset = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    nodes += [helper.make_node("Gather", [x, const("bgr2rgb", np.array([2, 1, 0], np.int64))], ["rgb"], axis=1),
              helper.make_node("Mul", ["rgb", const("scale", scale.reshape(1, 3, 1, 1))], ["scaled"]),
              helper.make_node("Add", ["scaled", const("offset", offset.reshape(1, 3, 1, 1))], ["pixels"]),
              helper.make_node("Conv", ["pixels", const("w", np.asarray(weights, np.float32).reshape(k, 3, 1, 1)),
                                        const("b", np.asarray(bias, np.float32))], ["logits"]),
              # mask size from the frame's own shape: ceil(side / s) = (side + s - 1) // s
              helper.make_node("Shape", ["frame"], ["frame_shape"]),
              helper.make_node("Slice", ["frame_shape", "one", "three"], ["frame_hw"]),
              helper.make_node("Add", ["frame_hw", const("s_minus_1", np.array([s - 1], np.int64))], ["padded"]),
              helper.make_node("Div", ["padded", const("s", np.array([s], np.int64))], ["mask_hw"]),
              helper.make_node("Shape", ["logits"], ["logit_shape"]),
              helper.make_node("Slice", ["logit_shape", "z", "two"], ["nk"]),
              helper.make_node("Concat", ["nk", "mask_hw"], ["up_sizes"], axis=0),
              helper.make_node("Resize", ["logits", "", "", "up_sizes"], ["up"], mode="linear",
                               coordinate_transformation_mode="half_pixel"),
              helper.make_node("ArgMax", ["up"], ["labels"], axis=1, keepdims=0)]
    last = "labels"
    if lie:
        nodes.append(helper.make_node("Add", ["labels", const("lie", np.array(lie, np.int64))], ["lying"]))
        last = "lying"
    nodes.append(helper.make_node("Cast", [last], ["mask"], to=MASK_TYPES[mask_dtype]))
    graph = helper.make_graph(
        nodes, "frame-pixel", [helper.make_tensor_value_info("frame", TensorProto.UINT8, [batch, h, w, 3])],
        [helper.make_tensor_value_info("mask", MASK_TYPES[mask_dtype], [batch, *mask_hw])], c)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the lowest for opset 17: the runtime tests also run on onnxruntime 1.17 (IR <= 9)
    return model


def write_frame_model(path: Path, weights: np.ndarray = PIXEL_WEIGHTS, bias: np.ndarray = PIXEL_BIAS, *,
                      input_size: tuple[int, int] | None = None, frame_hw: tuple[int, int] | None = None,
                      stride: int = 1, mask_dtype: type = np.uint8, meta: dict | None = None, **graph) -> Path:
    """The frame-form pixel model with segrt metadata written by ModelMetadata.to_onnx (``meta`` overrides
    fields)."""
    model = frame_graph(weights, bias, input_size=input_size, frame_hw=frame_hw, stride=stride,
                        mask_dtype=mask_dtype, **graph)
    fields = {"classes": [f"c{i}" for i in range(len(weights))], "input_size": input_size, "mean": (0.0, 0.0, 0.0),
              "std": (1.0, 1.0, 1.0), "form": "frame", "output": "mask", "frame_size": frame_hw,
              "output_stride": stride, "extra": {"post": "dense"}, **(meta or {})}
    ModelMetadata(**fields).to_onnx(model)
    onnx.save(model, str(path))
    return path
