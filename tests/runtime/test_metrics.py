"""Metrics from one confusion matrix over the split, checked against hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.runtime.datasets import IGNORE, camvid, open_dataset
from segrt.runtime.errors import DatasetError
from segrt.runtime.metrics import ConfusionMatrix


def test_hand_made_case():
    truth = np.array([[0, 0, 1], [1, 2, IGNORE]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, truth)
    r = cm.result(["a", "b", "c"])
    # class a: tp 1, fn 1, fp 0 -> 1/2; b: tp 2, fp 1 -> 2/3; c: 1/1. Ignored pixel does not count.
    assert r.per_class_iou == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 1.0})
    assert r.miou == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert r.pixel_accuracy == pytest.approx(4 / 5)


def test_accumulates_over_split_not_per_image():
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0]]), np.array([[0]]))  # image 1: perfect on one pixel
    cm.update(np.zeros((10, 10), np.uint8), np.ones((10, 10), np.uint8))  # image 2: all wrong
    r = cm.result()
    # Split-level: class 0 tp 1, fp 100 -> 1/101; class 1: 0/100 -> 0. Per-image averaging would differ.
    assert r.per_class_iou["0"] == pytest.approx(1 / 101)
    assert r.per_class_iou["1"] == 0.0
    assert r.images == 2


def test_absent_class_is_left_out_of_mean_and_out_of_range_prediction_is_wrong():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 7]]), np.array([[0, 0]]))
    r = cm.result()
    assert r.per_class_iou["0"] == 0.5 and r.per_class_iou["2"] is None
    assert r.miou == 0.5 and r.pixel_accuracy == 0.5


def test_camvid_loader_maps_unlabelled_to_ignore(camvid_root):
    ds = camvid(camvid_root, "val")
    assert len(ds) == 101 and len(ds.classes) == 11 and ds.classes[0] == "Sky"
    img, label = ds[0]
    assert img.shape == (360, 480, 3) and label.shape == (360, 480)
    raw = __import__("cv2").imread(str(ds.labels[0]), -1)
    assert np.array_equal(label == IGNORE, raw == 11)
    assert set(np.unique(label)) <= set(range(11)) | {IGNORE}


def test_dataset_errors(tmp_path, camvid_root):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nothing", "camvid", "val")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        open_dataset(camvid_root, "voc", "val")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    __import__("cv2").imwrite(str(tmp_path / "images" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="no label for a.png"):
        open_dataset(tmp_path, "folder", "")
