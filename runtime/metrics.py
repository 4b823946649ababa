"""Segmentation metrics accumulated from one confusion matrix over a whole split.

Per-image averaging over-weights small images and empty classes; the standard (Cityscapes, mmseg)
definition sums intersections and unions over the split first, which is what this does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segrt.runtime.datasets import IGNORE


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: truth, columns: prediction; the extra last column counts predictions outside the class
        # range, which are wrong for their true class but must not become a class of their own.
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.images = 0

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and label {truth.shape} differ in shape")
        truth = truth.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = (truth != self.ignore_index) & (truth >= 0) & (truth < self.num_classes)
        pred = np.where((pred >= 0) & (pred < self.num_classes), pred, self.num_classes)
        k = self.num_classes
        counts = np.bincount(truth[keep] * (k + 1) + pred[keep], minlength=k * (k + 1))
        self.matrix += counts.reshape(k, k + 1)
        self.images += 1

    def result(self, class_names: list[str] | None = None) -> SegMetrics:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m[:, : self.num_classes])
        gt = m.sum(1)
        union = gt + m[:, : self.num_classes].sum(0) - tp
        # Classes absent from both truth and prediction are left out of the mean (NaN), as in mmseg.
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = m.sum()
        names = class_names or [str(i) for i in range(self.num_classes)]
        return SegMetrics(
            miou=float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
            pixel_accuracy=float(tp.sum() / total) if total else 0.0,
            per_class_iou={n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
            images=self.images,
        )


@dataclass
class SegMetrics:
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    images: int

    def to_dict(self) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "per_class_iou": self.per_class_iou, "images": self.images}
