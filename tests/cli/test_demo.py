"""`segrt demo` end to end in a subprocess, as the README runs it: files written, numbers printed, Ctrl-C safe."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from conftest import BIKES, REPO

SEGRT = [sys.executable, "-m", "segrt"]


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_headless_demo_writes_video_and_masks_and_reports(b0_onnx, tmp_path):
    out, masks = tmp_path / "demo.mp4", tmp_path / "masks"
    run = subprocess.run([*SEGRT, "demo", str(BIKES), "--model", str(b0_onnx), "--headless", "--output", str(out),
                          "--save-masks", str(masks), "--max-frames", "5"],
                         capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr
    stdout = " ".join(run.stdout.split())
    assert re.search(r"5 frames at [\d.]+ FPS, latency p50 \d+ ms / p95 \d+ ms", stdout), stdout
    assert count_frames(out) == 5
    written = sorted(masks.glob("*.png"))
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(5)]
    mask = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (272, 640) and mask.dtype == np.uint8 and mask.max() < 11
    cap = cv2.VideoCapture(str(out))
    ok, frame = cap.read()
    assert ok and frame.shape == (272, 640, 3)


def test_ctrl_c_leaves_a_complete_playable_video(b0_onnx, tmp_path):
    out, masks = tmp_path / "demo.mp4", tmp_path / "masks"
    proc = subprocess.Popen(
        [
            *SEGRT,
            "demo",
            str(BIKES),
            "--model",
            str(b0_onnx),
            "--headless",
            "--output",
            str(out),
            "--save-masks",
            str(masks),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        # a shell's background job (`make test &`, nohup) starts with SIGINT ignored, and
        # Python then never raises KeyboardInterrupt: give the child a terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(masks.glob("*.png"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the demo finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    stdout = " ".join(stdout.split())
    frames = count_frames(out)
    assert frames >= 3
    assert re.search(rf"wrote .*demo.mp4 \({frames} frames\)", stdout), stdout
    assert abs(frames - len(list(masks.glob("*.png")))) <= 1  # Ctrl-C may land between the two writes


def test_demo_tiles_several_sources_into_one_video(b0_onnx, camvid_root, tmp_path):
    out, masks = tmp_path / "grid.mp4", tmp_path / "masks"
    run = subprocess.run([*SEGRT, "demo", str(BIKES), str(camvid_root / "val"), "--model", str(b0_onnx),
                          "--headless", "--output", str(out), "--save-masks", str(masks), "--max-frames", "4"],
                         capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr
    stdout = " ".join(run.stdout.split())
    assert re.search(r"2 cameras: 8 frames at [\d.]+ FPS", stdout), stdout
    assert re.search(r"camera 1 \(\S+val\): 4 frames at [\d.]+ FPS", stdout), stdout
    for cam, shape in (("cam0", (272, 640)), ("cam1", (360, 480))):  # each camera's masks at its own size
        written = sorted((masks / cam).glob("*.png"))
        assert [p.name for p in written] == [f"{i:06d}.png" for i in range(4)]
        assert cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED).shape == shape
    cap = cv2.VideoCapture(str(out))
    grids = []
    while (frame := cap.read())[0]:
        grids.append(frame[1])
    assert grids and grids[-1].shape == (360, 1280, 3)  # two 640x360 tiles side by side
    assert 4 <= count_frames(out) <= 8  # one grid per inference tick
    right = grids[-1][:, 640:]  # the last tick: both cameras have shown a frame (the first may have only one)
    assert right.std() > 10  # the CamVid camera's view is in its tile, letterboxed (black bars left and right)
    assert right[:, :20].max() < 30
