"""What every inference backend provides to :class:`segrt.Engine`."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from segrt.runtime.metadata import ModelMetadata


class Backend(Protocol):
    """Runs a prepared batch in the layout its graph takes; knows nothing about frames' pre or post-processing.

    - form ``tensor`` (the metadata's ``form``): float32 (N, 3, H, W) normalised RGB in, logits or labels out;
    - form ``frame``: the cameras' uint8 (N, H, W, 3) BGR frames in, (N, Hm, Wm) label masks out (the graph
      resizes, normalises, upsamples and takes the argmax itself).

    A backend owns the check of its model's metadata against the graph: ``metadata`` is the record after
    :func:`segrt.runtime.metadata.check_against_io` at load (a graph whose input is not the layout and dtype
    its record's form says is refused with ModelLoadError), and ``run`` passes what the graph returned through
    :func:`segrt.runtime.metadata.check_output`, so a model whose record lies is refused, never masked.
    """

    name: str
    metadata: ModelMetadata  # checked against the graph's input and output
    # The graph input's shape in its own layout, None for dynamic dimensions: (N, 3, H, W) for form "tensor",
    # (N, H, W, 3) for form "frame".
    input_shape: tuple[int | None, int | None, int | None, int | None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Form ``tensor``: logits (N, K, h, w) float or labels (N, h, w) integer, as the metadata's ``output``
        says (a graph's (N, 1, h, w) labels come back as (N, h, w)). Form ``frame``: (N, ceil(H / s),
        ceil(W / s)) masks in the metadata's ``mask_dtype`` (uint8, or uint16 past 256 classes; an int32
        graph output is converted), every label checked to be below the class count."""
        ...

    # Optional: ``lanes`` (int) and ``run_many(batches) -> outputs``, batches run concurrently where that is
    # faster than one after another (ONNX Runtime on the CPU); Engine uses them for several frames at once.

    def close(self) -> None: ...
