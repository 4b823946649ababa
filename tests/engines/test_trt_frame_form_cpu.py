"""The TensorRT backend's frame-form data path (issue 18), walked on the CPU through the strict stand-ins of
``tests/engines/trt_standin.py``: uint8 (N, H, W, 3) frames copied in, the mask copied out, pinned buffers
allocated once for the profile's largest shape, the CUDA graph recaptured when the frame size changes, int32
masks returned as uint16, and a lying engine refused. The stand-in "network" is a fixed numpy function
(label = blue + green of each stride block's first pixel, modulo K, plus ``lie``): these tests check the
data path, never accuracy."""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np
import pytest
from trt_standin import ENGINE_MAGIC, CpuCudart, StrictTensorRT, _Context, _Engine, _Runtime

from segrt import Engine
from segrt.engines.manifest import Manifest, TensorSpec, sha256_bytes, write_manifest
from segrt.runtime.errors import BackendError, ModelLoadError
from segrt.runtime.metadata import ModelMetadata

NP_TRT = {np.uint8: "UINT8", np.int32: "INT32", np.float32: "FLOAT"}


class FrameEngine(_Engine):
    def get_tensor_dtype(self, name: str):
        return getattr(self.trt.DataType, self.description["dtypes"][name])

    def create_execution_context(self):
        return self.trt.wrap("IExecutionContext", FrameContext(self))


class FrameContext(_Context):
    def set_input_shape(self, name: str, shape: tuple) -> bool:
        lo, _, hi = self.engine.description["profiles"][0][name]
        if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False
        s = self.engine.description["stride"]
        n, h, w, _ = shape
        self.shapes[name] = list(shape)
        self.shapes[self.engine.description["outputs"][0]["name"]] = [n, -(-h // s), -(-w // s)]
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from trt_standin import CURRENT_CUDART

        d = self.engine.description
        src, dst = d["inputs"][0]["name"], d["outputs"][0]["name"]
        in_shape, out_shape = list(self.shapes[src]), list(self.shapes[dst])
        out_type = {"UINT8": ctypes.c_uint8, "INT32": ctypes.c_int32}[d["dtypes"][dst]]

        def run() -> None:
            x = np.ctypeslib.as_array((ctypes.c_uint8 * int(np.prod(in_shape))).from_address(
                self.addresses[src])).reshape(in_shape)
            y = np.ctypeslib.as_array((out_type * int(np.prod(out_shape))).from_address(
                self.addresses[dst])).reshape(out_shape)
            y[:] = expected(x, d["classes"], d["stride"]) + d["lie"]
            self.executions.append({"shape": in_shape})

        CURRENT_CUDART[0].enqueue(stream_handle, run)
        return True


class FrameRuntime(_Runtime):
    def deserialize_cuda_engine(self, serialized_engine: bytes):
        description = json.loads(bytes(serialized_engine)[len(ENGINE_MAGIC):])
        return self.trt.wrap("ICudaEngine", FrameEngine(self.trt, description))


def expected(frames: np.ndarray, classes: int, stride: int) -> np.ndarray:
    """The stand-in network: (blue + green) of each stride block's first pixel, modulo K (up to 510 labels)."""
    block = frames[:, ::stride, ::stride].astype(np.int64)
    return (block[..., 0] + block[..., 1]) % classes


@pytest.fixture
def cuda(monkeypatch):
    from segrt.runtime.backends import cuda as cuda_helpers

    trt = StrictTensorRT("10.3.0.30", behaviours={"Runtime": FrameRuntime})
    cudart = CpuCudart([(8, 6)], integrated=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_helpers, "import_cudart", lambda: cudart)
    allocations: list[int] = []
    real = cudart.cudaMallocHost
    monkeypatch.setattr(cudart, "cudaMallocHost", lambda n: allocations.append(n) or real(n))
    cudart.pinned = allocations
    return cudart


def frame_engine(folder, *, classes=11, stride=1, out=np.uint8, in_dtype=np.uint8, lie=0, max_shape=(4, 64, 96, 3),
                 form="frame"):
    """An engine file the stand-in runtime loads, with its manifest (metadata of a frame-form model)."""
    description = {
        "inputs": [{"name": "frame", "shape": [-1, -1, -1, 3]}], "outputs": [{"name": "mask", "shape": [-1, -1, -1]}],
        "profiles": [{"frame": [[1, 8, 8, 3], [1, 32, 48, 3], list(max_shape)]}],
        "dtypes": {"frame": NP_TRT[in_dtype], "mask": NP_TRT[out]}, "stride": stride, "classes": classes,
        "lie": lie, "version_compatible": False, "dla_core": None}
    data = ENGINE_MAGIC + json.dumps(description).encode()
    path = folder / "model.engine"
    path.write_bytes(data)
    meta = ModelMetadata(classes=[f"c{i}" for i in range(classes)], input_size=(32, 48), form=form,
                         output="mask" if form == "frame" else "labels", output_stride=stride if form == "frame" else 1)
    write_manifest(Manifest(
        engine_file=path.name, engine_sha256=sha256_bytes(data), tensorrt_version="10.3.0.30", target="desktop",
        compute_capability=[8, 6], gpu_name="Stand-in GPU", precision="fp16",
        inputs=[TensorSpec("frame", [-1, -1, -1, 3], np.dtype(in_dtype).name)],
        outputs=[TensorSpec("mask", [-1, -1, -1], np.dtype(out).name)], metadata=json.loads(meta.to_json())), path)
    return path


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_frames_in_masks_out_with_buffers_reserved_once_for_the_largest_shape(cuda, tmp_path):
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(frame_engine(tmp_path, stride=2))
    assert backend.form == "frame" and backend.input_shape == (None, None, None, 3)
    assert cuda.pinned == [4 * 64 * 96 * 3, 4 * 32 * 48]  # uint8 in and mask out at the profile's maximum
    for n, h, w in [(1, 32, 48), (3, 64, 96), (2, 17, 9), (1, 32, 48)]:
        batch = frames(n, h, w, seed=h)
        mask = backend.run(batch)
        assert mask.dtype == np.uint8 and mask.shape == (n, -(-h // 2), -(-w // 2))
        np.testing.assert_array_equal(mask, expected(batch, 11, 2))
    assert len(cuda.pinned) == 2  # new frame sizes rebind the same buffers
    backend.close()


def test_int32_masks_of_many_classes_come_back_as_uint16(cuda, tmp_path):
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(frame_engine(tmp_path, classes=300, out=np.int32))
    batch = frames(2, 24, 40)
    mask = backend.run(batch)
    assert mask.dtype == np.uint16 and mask.max() > 255 and np.array_equal(mask, expected(batch, 300, 1))
    backend.close()


def test_the_cuda_graph_covers_frame_to_mask_and_is_recaptured_on_a_new_size(cuda, tmp_path):
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(frame_engine(tmp_path), cuda_graph=True)
    for h, w in [(32, 48), (32, 48), (64, 96), (64, 96), (32, 48)]:
        batch = frames(1, h, w, seed=w)
        np.testing.assert_array_equal(backend.run(batch), expected(batch, 11, 1))
    assert backend.cuda_graph_error is None and cuda.graph_launches == 5
    # each of the three shape changes ran one regular enqueue before its capture, and replays did the rest
    assert len(backend._context._impl.executions) == 3 + 5
    backend.close()


def test_engine_infer_batch_on_a_frame_engine_groups_sizes_and_chunks_by_the_profile(cuda, tmp_path):
    engine = Engine(frame_engine(tmp_path, max_shape=(2, 64, 96, 3)), backend="tensorrt")
    assert engine.form == "frame" and engine.backend_name.startswith("tensorrt")
    items = [frames(1, 32, 48, seed=i)[0] for i in range(5)] + [frames(1, 64, 96, seed=9)[0]]
    masks = engine.infer_batch(items)
    for frame, mask in zip(items, masks, strict=True):
        np.testing.assert_array_equal(mask, expected(frame[None], 11, 1)[0])
    shapes = [e["shape"][:1] for e in engine.backend._context._impl.executions]
    assert sorted(shapes) == [[1], [1], [2], [2]]  # 5 frames of one size in chunks of the profile's 2, then 1
    engine.close()


def test_an_engine_returning_labels_past_its_classes_raises_backend_error(cuda, tmp_path):
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(frame_engine(tmp_path, classes=11, lie=11))
    with pytest.raises(BackendError, match="outside 0..10"):
        backend.run(frames(1, 32, 48))
    backend.close()


def test_an_engine_whose_input_contradicts_its_form_is_refused(cuda, tmp_path):
    from segrt.runtime.backends.tensorrt import TensorRTBackend

    with pytest.raises(ModelLoadError, match="'form' is 'frame'.*float32"):
        TensorRTBackend(frame_engine(tmp_path, in_dtype=np.float32))
    with pytest.raises(ModelLoadError, match="'form' is 'tensor'.*uint8"):
        TensorRTBackend(frame_engine(tmp_path, form="tensor"))
