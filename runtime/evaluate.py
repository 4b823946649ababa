"""Evaluate any predictor (frame -> mask) on a dataset split with one confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from segrt.runtime.arguments import check_callable, check_instance, check_int
from segrt.runtime.datasets import SegDataset
from segrt.runtime.metrics import ConfusionMatrix, SegMetrics
from segrt.runtime.progress import progress_bar

Predictor = Callable[[np.ndarray], np.ndarray]


def evaluate(predict: Predictor, dataset: SegDataset, limit: int | None = None, show_progress: bool = True,
             description: str = "eval") -> SegMetrics:
    check_callable(predict, "predict")
    check_instance(dataset, "dataset", SegDataset)
    check_int(limit, "limit", minimum=0, optional=True)
    cm = ConfusionMatrix(len(dataset.classes))
    indices: Iterable[int] = range(len(dataset) if limit is None else min(limit, len(dataset)))
    for i in progress_bar(indices, description=description, enabled=show_progress):
        img, label = dataset[i]
        cm.update(predict(img), label)
    return cm.result(dataset.classes)
