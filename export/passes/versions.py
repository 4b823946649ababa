"""The ONNX IR version segrt writes: the lowest that carries the file's opset, so that the oldest runtimes read it.

onnxruntime 1.17, the oldest segrt allows, reads IR <= 9 ("Unsupported model IR version: 10"); TensorRT 10.x's
parser (onnx 1.16) reads <= 10. Model-local functions (token merging) need IR 8.
"""

from __future__ import annotations

import onnx

MIN_IR_VERSION = 8


def ir_version_for(opset: int) -> int:
    """The IR version segrt writes for a default-domain ``opset``: the lowest that carries it, at least 8."""
    return max(MIN_IR_VERSION, onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)], True))
