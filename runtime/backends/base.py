"""What every inference backend provides to :class:`segrt.Engine`."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from segrt.runtime.metadata import ModelMetadata


class Backend(Protocol):
    """Runs a prepared (N, 3, H, W) float32 batch; knows nothing about frames or masks."""

    name: str
    metadata: ModelMetadata
    # (N, 3, H, W) with None for dynamic dimensions.
    input_shape: tuple[int | None, int | None, int | None, int | None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Returns logits (N, K, h, w) float or labels (N, h, w) integer, as the metadata's ``output`` says."""
        ...

    def close(self) -> None: ...
