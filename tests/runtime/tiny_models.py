"""Tiny ONNX models built with onnx.helper (no torch) whose masks a few lines of numpy can predict.

A "pixel model" is one 1x1 convolution: class k's logit at a pixel is ``W[k] . rgb + b[k]`` with rgb
on [0, 1] (the metadata's mean 0 and std 1). :func:`reference_mask` computes the mask it must give,
independently of segrt's frame handling, so tests can check every step from the caller's array on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

# Four classes whose winners depend on colour and brightness, chosen so that no integer grey level is
# an exact tie (grey x: 1.3x, 0.9x, 0.8x, 0.9x + 0.25 -> class 3 below x = 0.625, class 0 above).
PIXEL_WEIGHTS = np.array([[1.0, 0.3, 0.0], [0.2, 1.0, -0.3], [-0.4, 0.1, 1.1], [0.3, 0.3, 0.3]], np.float32)
PIXEL_BIAS = np.array([0.0, 0.0, 0.0, 0.25], np.float32)
AMBIGUOUS = 1e-4  # top-two logit margin below which float32 and float64 may pick different classes


def write_pixel_model(path: Path, weights: np.ndarray = PIXEL_WEIGHTS, bias: np.ndarray = PIXEL_BIAS,
                      input_hw: tuple[int, int] | None = None, output: str = "logits") -> Path:
    """A 1x1-conv model; ``input_hw`` None gives dynamic H and W (frames run at their own size).
    ``output="labels"`` appends an ArgMax so the graph returns (N, h, w) int64 labels."""
    k = len(weights)
    h, w = input_hw if input_hw else ("H", "W")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logits"])]
    if output == "labels":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0))
        out = helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", h, w])
    else:
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k, h, w])
    graph = helper.make_graph(
        nodes, "pixel", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])], [out],
        [numpy_helper.from_array(np.asarray(weights, np.float32).reshape(k, 3, 1, 1), "w"),
         numpy_helper.from_array(np.asarray(bias, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # the lowest for opset 17: the runtime tests also run on onnxruntime 1.17 (IR <= 9)
    meta = {"classes": [f"c{i}" for i in range(k)], "input_size": list(input_hw) if input_hw else None,
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "output": output}
    helper.set_model_props(model, {"segrt": json.dumps(meta)})
    path.write_bytes(model.SerializeToString())
    return path


def plain_bgr(frame: np.ndarray) -> np.ndarray:
    """The documented frame rule written out plainly on a contiguous copy (not segrt's as_bgr):
    HxW and HxWx1 -> the grey value in all three channels; HxWx4 -> the first three; HxWx3 as is."""
    copy = np.array(frame, dtype=np.uint8, copy=True, order="C")
    if copy.ndim == 2:
        copy = copy[:, :, None]
    if copy.shape[2] == 1:
        copy = np.concatenate([copy, copy, copy], axis=2)
    return copy[:, :, :3]


def reference_mask(bgr: np.ndarray, weights: np.ndarray = PIXEL_WEIGHTS, bias: np.ndarray = PIXEL_BIAS,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(expected labels, ambiguous pixels) of a pixel model at the frame's own size, in float64."""
    rgb = bgr[:, :, ::-1].astype(np.float64) / 255.0
    logits = rgb @ np.asarray(weights, np.float64).T + np.asarray(bias, np.float64)
    top2 = np.sort(logits, axis=2)[:, :, -2:] if logits.shape[2] > 1 else np.concatenate([logits, -np.inf * logits], 2)
    return logits.argmax(2), (top2[:, :, 1] - top2[:, :, 0]) < AMBIGUOUS
