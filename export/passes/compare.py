"""Numerical comparison of two model outputs, shared by the torch export check and the torch-free FP16 pass."""

from __future__ import annotations

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected|| in float64 (guarded against an all-zero reference)."""
    denom = float(np.linalg.norm(expected.astype(np.float64)))
    return float(np.linalg.norm(actual.astype(np.float64) - expected.astype(np.float64)) / max(denom, 1e-12))
