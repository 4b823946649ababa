"""Shared fixtures: real data from ../shared, and one exported model reused across tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGRT_SHARED", REPO.parent / "shared"))
CAMVID = SHARED / "data" / "camvid"
BIKES = REPO / "examples" / "media" / "bikes.mp4"


def _has_gpu() -> bool:
    try:
        import tensorrt
        from cuda.bindings import runtime as cudart

        if not hasattr(tensorrt, "Builder"):  # tensorrt-stubs alone import as an empty package
            return False

        err, count = cudart.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT and cuda-python")
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
