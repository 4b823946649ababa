"""segrt's TensorRT build, load, run and verify paths, walked on the CPU through the strict stand-ins of
``tests/engines/trt_standin.py`` (signatures from tensorrt-stubs, members gated by engines/trt_table.py).

Each test names the issue-17 defect it would have caught."""

from __future__ import annotations

import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trt_standin import CpuCudart, StrictTensorRT, expected_output

from segrt.engines.builder import adopt_engine, build_engine, configure
from segrt.engines.manifest import manifest_path
from segrt.engines.model_info import describe
from segrt.engines.plan import BuildRequest, make_plan
from segrt.engines.targets import get_target
from segrt.runtime.errors import ConfigError
from segrt.runtime.metadata import METADATA_KEY, ModelMetadata

CLASSES = 3


def segmentation_onnx(path, *, dynamic=True, scatter=False, size=(64, 64)):
    """A small (N, 3, H, W) -> (N, CLASSES, H, W) graph with segrt metadata, made with the onnx package."""
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, *size]
    out_dims = ["N", CLASSES, "H", "W"] if dynamic else [1, CLASSES, *size]
    weight = numpy_helper.from_array(np.ones((CLASSES, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="head/conv"),
             helper.make_node("Softmax", ["c"], ["logits"] if not scatter else ["s"], axis=1, name="head/softmax")]
    inits = [weight]
    if scatter:  # token merging's mean: a reducing ScatterElements (TensorRT runs it through its plugin)
        inits.append(numpy_helper.from_array(np.zeros((1, CLASSES, 1, 1), np.int64), "idx"))
        nodes.append(helper.make_node("ScatterElements", ["s", "idx", "s"], ["logits"], axis=1, reduction="add",
                                      name="merge/scatter"))
    graph = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMetadata(classes=[f"c{i}" for i in range(CLASSES)], input_size=None if dynamic else size)
    helper.set_model_props(model, {METADATA_KEY: meta.to_json()})
    onnx.save(model, str(path))
    return path


@pytest.fixture
def devices(monkeypatch):
    """Install the stand-ins: returns a function (tensorrt version, GPUs, integrated) -> (trt, cudart)."""
    from segrt.runtime.backends import cuda as cuda_helpers

    def install(version="10.3.0.30", gpus=((8, 6),), integrated=False, dla_cores=0):
        trt = StrictTensorRT(version)
        trt.dla_cores = dla_cores
        cudart = CpuCudart(list(gpus), integrated=integrated)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(cuda_helpers, "import_cudart", lambda: cudart)
        return trt, cudart

    return install


def plan_for(onnx_path, target, version, **request):
    info = describe(onnx.load(str(onnx_path)), onnx_path)
    return make_plan(get_target(target), info, version, BuildRequest(target, **request), stem=onnx_path.stem)


def engine_description(engine_path):
    import json

    from trt_standin import ENGINE_MAGIC

    return json.loads(engine_path.read_bytes()[len(ENGINE_MAGIC):])


# ------------------------------------------------------------------------------------------ the stand-in itself
def test_the_standin_is_strict(devices):
    trt, _ = devices("10.3.0.30")
    with pytest.raises(AttributeError, match="no attribute"):
        trt.Builder.not_an_api  # noqa: B018
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with pytest.raises(TypeError, match="match no stub signature"):
        builder.create_builder_config("unexpected")
    with pytest.raises(AttributeError, match="read-only"):
        builder.num_DLA_cores = 3
    # Gated by the version table: added in 10.15, removed in 11.
    with pytest.raises(AttributeError, match="10.3.0.30 has no OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE"):
        trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE  # noqa: B018
    trt11, _ = devices("11.4.1")
    with pytest.raises(AttributeError, match="11.4.1 has no BuilderFlag.FP16"):
        trt11.BuilderFlag.FP16  # noqa: B018


# ------------------------------------------------------------------------------------------ build, load, run
def test_build_load_and_run_in_chunks_from_another_thread(devices, tmp_path):
    """Defects 5 (cudaSetDevice only in the constructor's thread) and 6 (infer_batch over the profile's
    max batch), and 13 (configure/parse/build never ran in a test)."""
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    trt, cudart = devices("10.3.0.30", gpus=((8, 6), (8, 6)))
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx")
    plan = plan_for(onnx_path, "desktop", "10.3", precision="fp16", max_batch=2)
    result = build_engine(plan, onnx_path, tmp_path, progress=False)

    built = engine_description(result.engine)
    assert {"FP16", "PREFER_PRECISION_CONSTRAINTS"} <= set(built["flags"])
    assert built["fp32_layers"] == ["head/softmax"]  # the FP32 pin reached the softmax layer only
    assert built["profiles"][0]["x"][2][0] == 2  # --max-batch sets the profile's largest batch

    backend = TensorRTBackend(result.engine, device=1)
    assert backend.max_batch == 2 and backend.metadata.classes == ["c0", "c1", "c2"]
    batch = np.random.default_rng(0).random((5, 3, 256, 256), dtype=np.float32)
    outputs: list[np.ndarray] = []
    worker = threading.Thread(target=lambda: outputs.append(backend.run(batch)), name="camera-thread")
    worker.start()
    worker.join()
    assert outputs, "run() raised in the worker thread"
    np.testing.assert_array_equal(outputs[0], expected_output(batch, CLASSES))
    executions = backend._context._impl.executions
    assert [e["shape"][0] for e in executions] == [2, 2, 1]
    assert {e["device"] for e in executions} == {1}  # every enqueue ran on the engine's GPU
    assert ("camera-thread", 1) in cudart.set_device_calls
    backend.close()


def test_cuda_graph_replays_and_gives_the_same_result(devices, tmp_path):
    """Defect 10's backend half: the captured graph is what later frames replay."""
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    _, cudart = devices()
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx", dynamic=False)
    result = build_engine(plan_for(onnx_path, "desktop", "10.3", precision="fp16"), onnx_path, tmp_path,
                          progress=False)
    backend = TensorRTBackend(result.engine, cuda_graph=True)
    frames = np.random.default_rng(1).random((3, 1, 3, 64, 64), dtype=np.float32)
    for frame in frames:
        np.testing.assert_array_equal(backend.run(frame), expected_output(frame, CLASSES))
    assert backend.cuda_graph_error is None and cudart.graph_launches == 3
    backend.close()


def test_version_compatible_build_serialises_plugins_and_adopt_loads_it(devices, tmp_path):
    """Defect 4: plugins_to_serialize from the parser, and engine_host_code_allowed when adopting."""
    devices()
    onnx_path = segmentation_onnx(tmp_path / "merged.onnx", scatter=True)
    plan = plan_for(onnx_path, "desktop", "10.3", precision="fp16", version_compatible=True)
    result = build_engine(plan, onnx_path, tmp_path, progress=False)
    built = engine_description(result.engine)
    assert built["version_compatible"] and built["plugins_to_serialize"] == ["libnvinfer_vc_plugin.so.10"]

    manifest_path(result.engine).unlink()  # as if trtexec --versionCompatible had built it
    written = adopt_engine(plan, result.engine, onnx_path)
    assert written.is_file() and '"version_compatible": true' in written.read_text()


def test_dla_engine_is_loaded_on_its_core(devices, tmp_path):
    """Defect 8: runtime.DLA_core from the manifest before deserialising (backend and --adopt)."""
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    trt, _ = devices("10.3.0.30", gpus=((8, 7),), integrated=True, dla_cores=2)
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx", dynamic=False)
    plan = plan_for(onnx_path, "jetson-orin", "10.3", precision="fp16", dla_core=1)
    result = build_engine(plan, onnx_path, tmp_path, progress=False)
    assert engine_description(result.engine)["dla_core"] == 1
    backend = TensorRTBackend(result.engine)
    assert backend._runtime.DLA_core == 1
    backend.close()
    manifest_path(result.engine).unlink()
    assert adopt_engine(plan, result.engine, onnx_path).is_file()


def test_tensorrt_11_builds_strongly_typed_without_the_removed_flags(devices, tmp_path):
    """Defect 13: a call missing in the target's TensorRT fails; a TensorRT 10 plan cannot be configured on 11."""
    trt, _ = devices("11.4.1", gpus=((8, 7),), integrated=True)
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx", dynamic=False)
    plan = plan_for(onnx_path, "jetson-orin-jp7", "11.4.1", precision="fp32")
    result = build_engine(plan, onnx_path, tmp_path, progress=False)
    built = engine_description(result.engine)
    assert built["strongly_typed"] and built["flags"] == []

    plan10 = plan_for(onnx_path, "jetson-orin", "10.3", precision="fp16")
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    with pytest.raises(ConfigError, match="no builder flag FP16"):
        configure(builder, builder.create_network(0), plan10, None, False)


def test_hardware_compatible_build_with_progress_bars(devices, tmp_path):
    """The ampere_plus and progress-monitor (IProgressMonitor subclass) paths of configure()."""
    devices()
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx", dynamic=False)
    plan = plan_for(onnx_path, "desktop-ampere-plus", "10.3", precision="fp16")
    built = engine_description(build_engine(plan, onnx_path, tmp_path, progress=True).engine)
    assert built["hardware_compatibility"] == "AMPERE_PLUS" and built["progress_monitor"]


def test_verify_reaches_polygraphy_with_a_checked_engine(devices, tmp_path):
    """segrt verify's engine path: TensorRT import, plugins, GPU check and manifest check before polygraphy."""
    from polygraphy.backend.trt import TrtRunner

    from segrt.engines.verify import _runner

    devices()
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx", dynamic=False)
    result = build_engine(plan_for(onnx_path, "desktop", "10.3", precision="fp16"), onnx_path, tmp_path,
                          progress=False)
    assert isinstance(_runner(result.engine, "candidate"), TrtRunner)


def test_engine_reaches_cuda_graphs_and_batches_over_the_profile(devices, tmp_path, camvid_frame):
    """Defects 10 (CUDA-graph replay unreachable from Engine) and 6 (infer_batch beyond the profile)."""
    from segrt.runtime.engine import Engine

    _, cudart = devices()
    onnx_path = segmentation_onnx(tmp_path / "seg.onnx")
    plan = plan_for(onnx_path, "desktop", "10.3", precision="fp16", max_batch=2)
    result = build_engine(plan, onnx_path, tmp_path, progress=False)
    with Engine(result.engine, cuda_graph=True) as engine:
        masks = engine.infer_batch([camvid_frame] * 5)  # five cameras, an engine built for two
        again = engine.infer_batch([camvid_frame] * 2)
    assert len(masks) == 5 and all(m.shape == camvid_frame.shape[:2] for m in masks)
    assert all(np.array_equal(m, masks[0]) for m in masks + again)
    assert cudart.graph_launches >= 2  # frames after the first capture replay the graph
