"""Shared fixtures: real data from ../shared, and one exported model reused across tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGRT_SHARED", REPO.parent / "shared"))
CAMVID = SHARED / "data" / "camvid"
BIKES = REPO / "examples" / "media" / "bikes.mp4"


def gpu_skip_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when they can. Only a missing TensorRT, missing cuda-python or
    no visible GPU is a reason: a TensorRT or CUDA that is installed but broken raises, so it fails loudly
    instead of turning every GPU test into a silent skip."""
    try:
        import tensorrt
    except ImportError as exc:
        return f"TensorRT is not installed ({exc})"
    if not hasattr(tensorrt, "Builder"):  # tensorrt-stubs alone import as an empty package
        return "only tensorrt-stubs is installed, not TensorRT"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        return f"cuda-python is not installed ({exc})"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return f"no CUDA GPU is visible ({err}, {count} devices)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU with TensorRT and cuda-python: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set SEGRT_SHARED)")
    return CAMVID


@pytest.fixture(scope="session")
def camvid_frame(camvid_root):
    import cv2

    path = sorted((camvid_root / "val").glob("*.png"))[0]
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


TINY_ONNX = REPO / "tests" / "fixtures" / "segformer-tiny.onnx"


@pytest.fixture(scope="session")
def tiny_onnx() -> Path:
    """A committed 256x320 SegFormer ONNX (11 classes, random weights; tools/make_test_model.py wrote it): the
    runtime's tests use it so that they run where torch is not installed."""
    return TINY_ONNX


TINY_FRAME_ONNX = REPO / "tests" / "fixtures" / "segformer-tiny-frame.onnx"


@pytest.fixture(scope="session")
def tiny_frame_onnx() -> Path:
    """The frame form of the same seeded tiny SegFormer (tools/make_test_model.py): uint8 BGR frames of any size
    and a dynamic batch in, uint8 masks at the frame's size out ("refine" post-processing), torch-free."""
    return TINY_FRAME_ONNX


@pytest.fixture(scope="session")
def bundled_logits_onnx(tmp_path_factory) -> Path:
    """The network inside the bundled deploy model (frame form) as a logits-form ONNX, for tests of the float
    path (Engine.logits); torch-free (onnx and segrt's ONNX passes only)."""
    import onnx

    from segrt.export.passes.frame_graph import is_frame_form, network_of
    from segrt.runtime.models import models_dir

    model = onnx.load(str(models_dir() / "camvid-b0.onnx"))
    path = tmp_path_factory.mktemp("bundled") / "camvid-b0-logits.onnx"
    onnx.save(network_of(model) if is_frame_form(model) else model, str(path))
    return path


@pytest.fixture
def regular_file(tmp_path) -> Path:
    """A regular file where a folder would have to be: writes under it fail even for root (tests run as root,
    so permission bits prove nothing)."""
    path = tmp_path / "regular.txt"
    path.write_text("a regular file where a folder would have to be\n")
    return path


@pytest.fixture(scope="session")
def random_b0():
    from segrt.export.model.checkpoints import random_model

    return random_model("random:b0:11")


@pytest.fixture(scope="session")
def b0_onnx(tmp_path_factory, random_b0) -> Path:
    """A verified 256x320 export of a seeded random B0 (11 classes), shared by the runtime tests."""
    from segrt.export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("models") / "b0.onnx"
    export_onnx(random_b0.model, random_b0.metadata, path, size=(256, 320))
    return path


def count_frames(path) -> int:
    """Frames OpenCV can decode from a video file: what a sink claims to have written must be there."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n
