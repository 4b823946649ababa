"""What the build plan needs to know about an ONNX model, read once with the onnx package."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from segrt.export.passes.frame_graph import PREFIX as FRAME_WRAPPER
from segrt.runtime.errors import ModelLoadError
from segrt.runtime.metadata import ModelMetadata

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    # An int per dimension, or the symbolic name (str) / None for dynamic dimensions.
    shape: tuple[int | str | None, ...]
    dtype: str  # numpy-style name: float32, float16, uint8, int64 ...

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int) or d <= 0]

    @property
    def is_dynamic(self) -> bool:
        return bool(self.dynamic_axes)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": [d if isinstance(d, int) else -1 for d in self.shape], "dtype": self.dtype}


@dataclass
class ModelInfo:
    path: Path
    sha256: str
    ir_version: int
    opset: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    metadata: ModelMetadata | None
    op_types: set[str]
    functions: list[str] = field(default_factory=list)  # "domain.name" of model-local functions
    quantized: bool = False  # Q/DQ nodes: explicit INT8
    float16: bool = False  # FP16 weights or casts to FP16: already a mixed-precision graph
    weight_bytes: int = 0

    @property
    def is_dynamic(self) -> bool:
        return any(t.is_dynamic for t in self.inputs)

    @property
    def variant(self) -> str:
        return "qdq" if self.quantized else "fp16" if self.float16 else "fp32"


def dtype_name(elem_type: int) -> str:
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor = value.type.tensor_type
    dims: list[int | str | None] = []
    for d in tensor.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return TensorInfo(value.name, tuple(dims), dtype_name(tensor.elem_type))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def all_nodes(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.NodeProto]]:
    """Every node with its scope: main graph, subgraphs (If/Loop bodies) and model-local function bodies."""
    def walk(graph_nodes, scope: str) -> Iterator[tuple[str, onnx.NodeProto]]:
        for node in graph_nodes:
            yield scope, node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g.node, f"{scope}{node.name}/{attr.name}/")
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for i, g in enumerate(attr.graphs):
                        yield from walk(g.node, f"{scope}{node.name}/{attr.name}[{i}]/")

    yield from walk(model.graph.node, "")
    for fn in model.functions:
        yield from walk(fn.node, f"function {fn.domain}.{fn.name}: ")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def read_metadata(model: onnx.ModelProto) -> ModelMetadata | None:
    """The model's segrt metadata, None for a foreign ONNX (format owned by ``ModelMetadata.from_onnx``)."""
    return ModelMetadata.from_onnx(model)


def load_onnx(path: str | Path, with_weights: bool = True) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=with_weights)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX model: {exc}") from exc


def describe(model: onnx.ModelProto, path: str | Path, sha256: str | None = None) -> ModelInfo:
    path = Path(path)
    initializer_names = {i.name for i in model.graph.initializer}
    nodes = [n for _, n in all_nodes(model)]
    float16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in nodes)
    return ModelInfo(
        path=path,
        sha256=sha256 or (sha256_file(path) if path.is_file() else ""),
        ir_version=model.ir_version,
        opset=default_opset(model),
        inputs=[_tensor_info(v) for v in model.graph.input if v.name not in initializer_names],
        outputs=[_tensor_info(v) for v in model.graph.output],
        metadata=read_metadata(model),
        op_types={n.op_type for n in nodes},
        functions=[f"{f.domain}.{f.name}" for f in model.functions],
        quantized=is_quantized(nodes),
        float16=float16,
        weight_bytes=sum(_nbytes(i) for i in model.graph.initializer),
    )


def is_quantized(nodes) -> bool:
    """Explicit INT8: Q/DQ nodes in the network. The frame form's own DequantizeLinear nodes (its exact resize
    and normalisation scale uint8 levels to float) say nothing about the network's precision."""
    return any(n.op_type in QDQ_OPS and n.domain in DEFAULT_DOMAINS and not n.name.startswith(FRAME_WRAPPER)
               for n in nodes)


def _nbytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    size = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize if tensor.data_type else 4
    return count * size


def inspect_model(path: str | Path) -> tuple[onnx.ModelProto, ModelInfo]:
    model = load_onnx(path)
    return model, describe(model, path)
