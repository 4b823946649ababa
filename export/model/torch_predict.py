"""Run a PyTorch SegFormer exactly as the runtime runs an exported one (same pre/post-processing)."""

from __future__ import annotations

import numpy as np
import torch

from segrt.export.model.segformer import SegFormer
from segrt.runtime.metadata import ModelMetadata
from segrt.runtime.preprocess import frames_to_input, logits_to_mask


class TorchPredictor:
    def __init__(self, model: SegFormer, metadata: ModelMetadata, size: tuple[int, int] | None = None,
                 device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.metadata = metadata
        self.size = size or metadata.input_size
        self.device = torch.device(device)

    @torch.no_grad()
    def logits(self, frame: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(frames_to_input([frame], self.size, self.metadata.mean, self.metadata.std))
        return self.model(x.to(self.device)).float().cpu().numpy()[0]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return logits_to_mask(self.logits(frame), frame.shape[:2])
