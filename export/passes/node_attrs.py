"""Reading an ONNX node's attributes, shared by the graph passes and the TensorRT compatibility check."""

from __future__ import annotations

import onnx


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute ``name`` of ``node`` (strings decoded), or ``default`` when it is not set."""
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
