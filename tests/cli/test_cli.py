"""The `segrt` command line, end to end on real inputs (subprocesses, as a user runs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np


def segrt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segrt", *args], capture_output=True, text=True, timeout=timeout)


def test_run_on_a_folder_writes_masks_and_overlays(b0_onnx, camvid_root, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    for p in sorted((camvid_root / "val").glob("*.png"))[:2]:
        (src / p.name).write_bytes(p.read_bytes())
    r = segrt("run", str(src), "--model", str(b0_onnx), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    masks = sorted((tmp_path / "out").glob("*_mask.png"))
    assert len(masks) == 2 and len(list((tmp_path / "out").glob("*_overlay.jpg"))) == 2
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (360, 480) and mask.dtype == np.uint8 and mask.max() < 11
    assert "latency p50" in r.stdout


def test_info_and_typed_error_exit_code(b0_onnx, tmp_path):
    r = segrt("info", str(b0_onnx))
    assert r.returncode == 0 and "256x320" in r.stdout
    r = segrt("info", str(tmp_path / "missing.onnx"))
    assert r.returncode == 2 and "ModelLoadError" in r.stderr and "does not exist" in r.stderr


def test_eval_onnx_writes_json(b0_onnx, camvid_root, tmp_path):
    out = tmp_path / "r.json"
    r = segrt("eval", str(b0_onnx), "--data", str(camvid_root), "--split", "val", "--limit", "3", "--json", str(out))
    assert r.returncode == 0, r.stderr
    import json

    metrics = json.loads(out.read_text())
    assert set(metrics) == {"miou", "pixel_accuracy", "per_class_iou", "images"}
    assert metrics["images"] == 3 and 0.0 <= metrics["miou"] <= 1.0 and len(metrics["per_class_iou"]) == 11


def test_gate_export_static_from_the_bundled_gates(camvid_root, tmp_path):
    gates = str(Path(__file__).resolve().parents[2] / "models" / "camvid-b0-gate30.safetensors")
    r = segrt("gate", "export", gates, "--mode", "static", "-o", str(tmp_path / "g.onnx"))
    assert r.returncode == 2 and "--data" in r.stderr  # frozen gates need training images, said plainly
    r = segrt(
        "gate",
        "export",
        gates,
        "--mode",
        "static",
        "--align",
        "16",
        "--data",
        str(camvid_root),
        "--calibrate",
        "4",
        "--size",
        "128x160",
        "-o",
        str(tmp_path / "g.onnx"),
    )
    assert r.returncode == 0, r.stderr
    from segrt.runtime.engine import Engine

    frame = cv2.imread(str(min((camvid_root / "val").glob("*.png"))))
    with Engine(tmp_path / "g.onnx") as engine:
        assert engine.infer(frame).shape == frame.shape[:2]
