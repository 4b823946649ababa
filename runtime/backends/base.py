"""What every inference backend provides to :class:`segrt.Engine`."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from segrt.runtime.metadata import ModelMetadata


class Backend(Protocol):
    """Runs a prepared (N, 3, H, W) float32 batch; knows nothing about frames or masks.

    A backend owns the check of its model's metadata against the graph: ``metadata`` is the record after
    :func:`segrt.runtime.metadata.check_against_io` at load, and ``run`` passes what the graph returned through
    :func:`segrt.runtime.metadata.check_output`, so a model whose record lies is refused, never masked.
    """

    name: str
    metadata: ModelMetadata  # checked against the graph's input and output
    # (N, 3, H, W) with None for dynamic dimensions.
    input_shape: tuple[int | None, int | None, int | None, int | None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Returns logits (N, K, h, w) float or labels (N, h, w) integer, as the metadata's ``output`` says
        (a graph's (N, 1, h, w) labels come back as (N, h, w))."""
        ...

    def close(self) -> None: ...
