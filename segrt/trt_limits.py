"""TensorRT limits that segrt's exporters and checkers must agree on: one owner per fact.

Sources: onnx-tensorrt ``docs/operators.md`` (TopK) and the TensorRT DLA documentation (dimension limit).
Pure constants, no imports: the exporters (torch side) and engines/ (no torch) both read them, so they live
beside neither, at the root of the package.
"""

from __future__ import annotations

TOPK_MAX_K = 3840  # the ONNX parser's TopK needs K < 3840 (operators.md, every 10.x release)
TOPK_LIMIT = TOPK_MAX_K - 1  # the largest K an exporter may emit
DLA_MAX_DIM = 8192  # DLA: no tensor dimension above 8192
