"""segrt export-triton: every config.pbtxt parses as Triton's ModelConfig protobuf (from tritonclient)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")


def _parse(path) -> object:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_export_triton_cli_writes_a_valid_onnxruntime_repository(tiny_onnx, camvid_frame, tmp_path):
    from segrt.runtime.engine import Engine

    done = subprocess.run([sys.executable, "-m", "segrt.cli", "export-triton", str(tiny_onnx), "-o", str(tmp_path),
                           "--kind", "cpu", "--post", "refine", "--instances", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "segformer-tiny"
    config = _parse(folder / "config.pbtxt")
    graph = onnx.load(str(folder / "1" / "model.onnx"))
    assert config.name == "segformer-tiny" and config.backend == "onnxruntime"
    assert [i.name for i in config.input] == [i.name for i in graph.graph.input] == ["frame"]
    assert [o.name for o in config.output] == [o.name for o in graph.graph.output] == ["mask"]
    assert config.input[0].data_type == model_config_pb2.TYPE_UINT8
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    # The test model has a fixed batch of 1: no batching, full dims, as Triton requires.
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, -1, -1, 3]
    meta = json.loads(config.parameters["segrt_metadata"].string_value)
    engine = Engine(tiny_onnx)
    assert meta["classes"] == engine.classes and meta["form"] == "frame"
    # What Triton's onnxruntime backend would run: the repository's graph gives the local Engine's mask.
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    mask = session.run(None, {"frame": camvid_frame[None]})[0][0]
    agree = float(np.mean(mask == engine.infer(camvid_frame)))
    assert agree >= 0.995, agree


def test_dynamic_batch_models_get_dynamic_batching(tmp_path):
    from segrt.serving.repository import Tensor, config_text

    text = config_text("m", platform="tensorrt_plan", inputs=[Tensor("frame", "uint8", [-1, 720, 1280, 3])],
                       outputs=[Tensor("mask", "uint16", [-1, 720, 1280])], metadata={"classes": ["a"]},
                       max_batch=16, instances=3, kind="gpu")
    (tmp_path / "config.pbtxt").write_text(text)
    config = _parse(tmp_path / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.input[0].dims) == [720, 1280, 3] and list(config.output[0].dims) == [720, 1280]
    assert config.output[0].data_type == model_config_pb2.TYPE_UINT16
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_existing_folder_needs_force(tiny_onnx, tmp_path):
    from segrt.runtime.errors import OutputError
    from segrt.serving.repository import export_triton

    export_triton(tiny_onnx, tmp_path, kind="cpu", post="refine")
    with pytest.raises(OutputError, match="--force"):
        export_triton(tiny_onnx, tmp_path, kind="cpu", post="refine")
    export_triton(tiny_onnx, tmp_path, kind="cpu", post="refine", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segformer-tiny"]  # no staging folder left behind


def test_a_frame_form_model_with_a_dynamic_batch_is_served_as_it_is(tiny_frame_onnx, tmp_path):
    from segrt.serving.repository import export_triton

    folder = export_triton(tiny_frame_onnx, tmp_path, kind="cpu", max_batch=6)
    config = _parse(folder / "config.pbtxt")
    assert config.max_batch_size == 6 and config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, -1, 3] and list(config.output[0].dims) == [-1, -1]
    same = onnx.load(str(tiny_frame_onnx)).graph
    assert [n.op_type for n in onnx.load(str(folder / "1" / "model.onnx")).graph.node] == [n.op_type for n in same.node]


def test_gpu_instances_get_the_portable_ops_and_cpu_instances_the_cpu_form(tiny_onnx, tmp_path):
    from segrt.export.passes.cpu_form import is_cpu_form, to_cpu_ops
    from segrt.serving.repository import export_triton

    cpu, changes = to_cpu_ops(onnx.load(str(tiny_onnx)))
    assert changes
    source = tmp_path / "tiny-cpu.onnx"
    onnx.save(cpu, str(source))
    on_gpu = export_triton(source, tmp_path / "gpu", kind="gpu")
    on_cpu = export_triton(source, tmp_path / "cpu", kind="cpu", post="refine")
    assert not is_cpu_form(onnx.load(str(on_gpu / "1" / "model.onnx")))
    assert is_cpu_form(onnx.load(str(on_cpu / "1" / "model.onnx")))
