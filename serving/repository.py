"""``segrt export-triton``: a Triton model repository for a production Triton with its own backends.

    repo/NAME/config.pbtxt
    repo/NAME/1/model.onnx      (backend "onnxruntime")   or   repo/NAME/1/model.plan (platform "tensorrt_plan")

The served graph is the frame form (uint8 BGR frames in, label mask out, issue 18), so Triton needs no
preprocessing model or ensemble: a logits-form ONNX is wrapped into the frame form here
(:func:`segrt.export.passes.frame_graph.to_frame_form`). Tensor names, data types and dims come from the
graph (ONNX) or the engine's manifest (TensorRT, which must have been built on the serving GPU's model with
the serving Triton's TensorRT version). The segrt metadata travels as the config parameter
``segrt_metadata`` (classes and palette for :class:`RemoteEngine`). The config.pbtxt text is written here
without tritonclient; the tests parse it with Triton's ModelConfig protobuf.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from segrt.runtime.arguments import check_choice, check_int
from segrt.runtime.errors import ConfigError, ModelLoadError, OutputError
from segrt.runtime.models import resolve
from segrt.runtime.remote_protocol import METADATA_PARAMETER, info
from segrt.serving.server import model_name

TRITON_TYPES = {"uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_ONNX_TYPES = {2: "uint8", 4: "uint16", 6: "int32", 7: "int64", 1: "float32", 10: "float16"}
KINDS = ("cpu", "gpu")
POSTS = ("dense", "refine")


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy name
    dims: list[int]  # -1: any size; the batch dimension included


def _tensor_text(t: Tensor, batched: bool) -> str:
    if t.dtype not in TRITON_TYPES:
        raise ConfigError(f"tensor {t.name!r} has dtype {t.dtype}, which segrt does not serve")
    dims = t.dims[1:] if batched else t.dims
    return (f'  {{\n    name: "{t.name}"\n    data_type: {TRITON_TYPES[t.dtype]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def config_text(name: str, *, platform: str, inputs: list[Tensor], outputs: list[Tensor], metadata: dict,
                max_batch: int, instances: int, kind: str, queue_delay_us: int = 2000) -> str:
    """config.pbtxt: names, types, dims, dynamic batching where the batch dimension is dynamic, instances."""
    batched = all(t.dims and t.dims[0] == -1 for t in inputs + outputs) and max_batch > 0
    backend = 'backend: "onnxruntime"' if platform == "onnxruntime_onnx" else f'platform: "{platform}"'
    lines = [f'name: "{name}"', backend, f"max_batch_size: {max_batch if batched else 0}",
             "input [\n" + ",\n".join(_tensor_text(t, batched) for t in inputs) + "\n]",
             "output [\n" + ",\n".join(_tensor_text(t, batched) for t in outputs) + "\n]"]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    group = "KIND_GPU" if kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {group}\n  }}\n]")
    value = json.dumps(json.dumps(metadata, separators=(",", ":")))  # a protobuf text string: JSON-escaped quotes
    lines.append(f'parameters {{\n  key: "{METADATA_PARAMETER}"\n  value {{\n    string_value: {value}\n  }}\n}}')
    return "\n".join(lines) + "\n"


def _onnx_tensors(values) -> list[Tensor]:
    out = []
    for v in values:
        shape = v.type.tensor_type.shape.dim
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in shape]
        out.append(Tensor(v.name, _ONNX_TYPES.get(v.type.tensor_type.elem_type, "unknown"), dims))
    return out


def _frame_onnx(path: Path, post: str, kind: str):
    """The frame form of ``path``; for GPU instances with the ops in their portable forms (the ONNX Runtime CPU
    forms segrt exports by default are correct on a GPU but lose TensorRT's LayerNorm fusion there)."""
    import onnx

    from segrt.export.passes import frame_graph
    from segrt.export.passes.cpu_form import to_portable_ops

    model = onnx.load(str(path))
    if not frame_graph.is_frame_form(model):
        model = frame_graph.to_frame_form(model, post=post)
    return to_portable_ops(model) if kind == "gpu" else model


def _metadata_info(raw: dict) -> dict:
    from segrt.runtime.metadata import ModelMetadata
    from segrt.runtime.preprocess import mask_dtype

    meta = ModelMetadata.from_json(json.dumps(raw))
    return info(meta, mask_dtype(len(meta.classes)))


def export_triton(model: str | Path, out: str | Path, *, name: str | None = None, max_batch: int = 8,
                  instances: int = 1, kind: str = "gpu", post: str = "dense", force: bool = False) -> Path:
    """Write ``out/NAME/{config.pbtxt, 1/model.onnx|model.plan}``; returns the model's folder."""
    check_int(max_batch, "max_batch", minimum=0, maximum=4096)
    check_int(instances, "instances", minimum=1, maximum=64)
    check_choice(kind, "kind", KINDS)
    check_choice(post, "post", POSTS)
    path = resolve(model, "onnx")
    name = name or model_name(model)
    folder = Path(out) / name
    if folder.exists() and not force:
        raise OutputError(f"{folder} exists; pass --force to replace it")
    staging = Path(out) / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    try:
        if path.suffix.lower() == ".onnx":
            import onnx

            from segrt.runtime.metadata import ModelMetadata

            graph = _frame_onnx(path, post, kind)
            meta = ModelMetadata.from_onnx(graph)
            if meta is None:
                raise ModelLoadError(f"{path} carries no segrt metadata")
            onnx.save(graph, str(staging / "1" / "model.onnx"))
            text = config_text(name, platform="onnxruntime_onnx", inputs=_onnx_tensors(graph.graph.input),
                               outputs=_onnx_tensors(graph.graph.output), metadata=_metadata_info(
                                   json.loads(meta.to_json())), max_batch=max_batch, instances=instances, kind=kind)
        else:
            from segrt.runtime.backends.engine_manifest import read_manifest

            manifest = read_manifest(path)
            if manifest.metadata.get("form") != "frame":
                raise ConfigError(f"{path} is a logits-form engine; build the frame form (`segrt build`, the "
                                  "default) to serve it on Triton")
            shutil.copyfile(path, staging / "1" / "model.plan")
            tensors = [[Tensor(t.name, t.dtype, list(t.shape)) for t in specs]
                       for specs in (manifest.inputs, manifest.outputs)]
            text = config_text(name, platform="tensorrt_plan", inputs=tensors[0], outputs=tensors[1],
                               metadata=_metadata_info(manifest.metadata), max_batch=max_batch, instances=instances,
                               kind="gpu")
        (staging / "config.pbtxt").write_text(text)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
