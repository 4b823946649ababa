"""Real sample frames shipped with segrt (export verification, smoke runs, the `run` sample)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).with_name("assets")


def sample_paths() -> list[Path]:
    return sorted(ASSETS.glob("*.jpg"))


def sample_frames() -> list[np.ndarray]:
    frames = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sample_paths()]
    return [f for f in frames if f is not None]
