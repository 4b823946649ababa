"""Turn an exported graph's ``segrt.TokenMerge`` calls into TensorRT AOT plugin nodes (``--merge-ops plugin``).

Each TokenMerge node keeps its op type, domain, inputs, outputs and ``r``, and gains the attributes the
TensorRT ONNX parser reads to map a node to a registered plugin: ``plugin_namespace`` (the parser before
10.10 ignores the domain), ``plugin_version`` and ``aot`` = 1 (use the plugin's ahead-of-time
implementation). The TokenMerge function definition is dropped, so no parser can inline the body instead
of the plugin (before 10.7 the parser prefers a local function). TokenUnmerge is a Gather and gains
nothing from a plugin: its body is inlined as standard ops.

The result runs only on TensorRT >= 10.9 with segrt's plugin registered at build time
(:mod:`segrt.engines.token_merge_plugin`); ONNX Runtime refuses it (no such op). It is made from the
verified function form, whose numbers the plugin reproduces (tests/export/test_merge_plugin.py).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from segrt.export.methods.merging.ops import DOMAIN
from segrt.runtime.errors import ExportError
from segrt.trt_plugins import TOKEN_MERGE

PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version", "aot")


def plugin_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's TokenMerge nodes that are plugin calls (carry ``plugin_namespace``)."""
    return [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == TOKEN_MERGE.name
            and any(a.name == "plugin_namespace" for a in n.attribute)]


def to_plugin_form(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` (function form) with every TokenMerge as a plugin node and no segrt functions."""
    import onnx.inliner

    merges = [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == TOKEN_MERGE.name]
    if not merges:
        raise ExportError("the graph has no segrt.TokenMerge node to turn into a plugin: --merge-ops plugin "
                          "needs a bipartite merge strategy (hq, fast or a JSON config with 'bsm')")
    if plugin_nodes(proto):
        raise ExportError("the graph's TokenMerge nodes are already plugin nodes")
    out = onnx.inliner.inline_selected_functions(proto, [(DOMAIN, "TokenUnmerge")], exclude=False)
    del out.functions[:]
    out.functions.extend(f for f in proto.functions if f.domain != DOMAIN)
    for node in out.graph.node:
        if node.domain == DOMAIN and node.op_type == TOKEN_MERGE.name:
            node.attribute.extend([helper.make_attribute("plugin_namespace", TOKEN_MERGE.namespace),
                                   helper.make_attribute("plugin_version", TOKEN_MERGE.version),
                                   helper.make_attribute("aot", 1)])
        elif node.domain == DOMAIN:
            raise ExportError(f"segrt.{node.op_type} has no plugin form")
    return out


def write_plugin_form(path: str | Path) -> int:
    """Rewrite the verified function-form export at ``path`` in plugin form (atomically); returns the number
    of plugin nodes."""
    from segrt.runtime import sinks

    path = Path(path)
    proto = to_plugin_form(onnx.load(str(path)))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the plugin form of {path.name} fails onnx.checker: {exc}") from exc
    sinks.write_bytes(path, proto.SerializeToString(), "ONNX model (plugin form)")
    return len(plugin_nodes(proto))
