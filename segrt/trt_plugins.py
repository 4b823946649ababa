"""The TensorRT plugins segrt can put in an ONNX graph, named once for the exporter (which writes plugin nodes)
and the engine builder (which registers and checks them). Pure data at the root of the package, like
:mod:`segrt.trt_limits`: the export side (torch) and engines/ (no torch) both read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PluginSpec:
    """One plugin segrt can put in an ONNX graph, as the parser and the plugin registry name it."""

    name: str  # the ONNX op type and TensorRT plugin name
    namespace: str
    version: str
    kind: str  # "aot": the kernel is compiled at build time and embedded in the engine
    min_tensorrt: str
    domain: str  # ONNX domain of the node (and of its function form)

    @property
    def plugin_id(self) -> str:
        return f"{self.namespace}::{self.name}"

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.plugin_id}


TOKEN_MERGE = PluginSpec("TokenMerge", "segrt", "1", "aot", "10.9", "segrt")
