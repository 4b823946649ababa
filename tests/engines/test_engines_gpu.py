"""On a GPU host with TensorRT: build real engines, run them through Engine, compare with ONNX Runtime.

All marked ``gpu``: they skip on machines without an NVIDIA GPU, TensorRT and cuda-python.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def desktop_engine(b0_onnx, tmp_path_factory):
    from segrt.engines.builder import build_engine
    from segrt.engines.bundle import write_bundle
    from segrt.engines.plan import BuildRequest
    from segrt.engines.targets import get_target
    from segrt.engines.versions import detect_tensorrt

    out = tmp_path_factory.mktemp("desktop-engine")
    bundle = write_bundle(b0_onnx, out, get_target("desktop"), BuildRequest("desktop", precision="fp16"))
    plan = bundle.plan_file.for_version(detect_tensorrt())
    return build_engine(plan, out / plan.onnx, out, progress=False)


def test_engine_matches_onnxruntime_on_camvid(desktop_engine, b0_onnx, camvid_frame):
    from segrt.runtime.engine import Engine

    trt_engine, ort_engine = Engine(desktop_engine.engine), Engine(b0_onnx)
    assert trt_engine.backend_name.startswith("tensorrt:") and trt_engine.classes == ort_engine.classes
    trt_mask, ort_mask = trt_engine.infer(camvid_frame), ort_engine.infer(camvid_frame)
    assert trt_mask.shape == camvid_frame.shape[:2] and trt_mask.dtype == np.uint8
    assert float((trt_mask == ort_mask).mean()) > 0.98
    trt_engine.close()


def test_cuda_graph_replay_gives_the_same_output(desktop_engine, camvid_frame):
    from segrt.runtime.backends.tensorrt import TensorRTBackend
    from segrt.runtime.preprocess import frames_to_input

    plain, graphed = TensorRTBackend(desktop_engine.engine), TensorRTBackend(desktop_engine.engine, cuda_graph=True)
    x = frames_to_input([camvid_frame], plain.metadata.input_size, plain.metadata.mean, plain.metadata.std)
    first = graphed.run(x)
    assert graphed.cuda_graph_error is None and graphed.use_cuda_graph
    np.testing.assert_allclose(graphed.run(x), first, rtol=0, atol=0)  # replay is deterministic
    np.testing.assert_allclose(plain.run(x), first, rtol=1e-3, atol=1e-3)
    x2 = frames_to_input([camvid_frame[::-1].copy()], plain.metadata.input_size, plain.metadata.mean,
                         plain.metadata.std)
    assert not np.allclose(graphed.run(x2), first)  # the graph reads the new input, not a captured copy
    plain.close(), graphed.close()


def test_timing_cache_and_manifest_written(desktop_engine):
    from segrt.engines.manifest import read_manifest

    assert desktop_engine.timing_cache is not None and desktop_engine.timing_cache.stat().st_size > 0
    manifest = read_manifest(desktop_engine.engine)
    assert manifest.tensorrt_version == desktop_engine.tensorrt_version and manifest.precision == "fp16"
    assert manifest.inputs[0].name == "pixel_values" and manifest.metadata["classes"]


def test_tampered_real_engine_is_refused(desktop_engine, tmp_path):
    import shutil

    from segrt.engines.manifest import manifest_path
    from segrt.runtime.engine import Engine
    from segrt.runtime.errors import EngineCompatibilityError

    copy = tmp_path / desktop_engine.engine.name
    shutil.copyfile(desktop_engine.engine, copy)
    shutil.copyfile(manifest_path(desktop_engine.engine), manifest_path(copy))
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(EngineCompatibilityError, match="refusing to deserialise"):
        Engine(copy)


def test_verify_engine_against_onnx(desktop_engine, b0_onnx, camvid_frame):
    from segrt.engines.verify import verify

    report = verify(b0_onnx, desktop_engine.engine, [camvid_frame], atol=5e-2, rtol=5e-2)
    assert report.passed and report.label_agreement > 0.98
