"""The aspect-ratio stretch of the training augmentation: it stretches heights against widths within its
range, keeps the scale's area, and draws nothing when off (older runs replay the same crops)."""

from __future__ import annotations

import numpy as np
import pytest

from segrt.commands.distill import parse_aspect
from segrt.export.training.augment import AugmentConfig, augment, scaled_size
from segrt.runtime.errors import ConfigError


def test_stretch_moves_the_aspect_ratio_within_its_range_and_keeps_the_area():
    cfg = AugmentConfig(base_size=(384, 512), scale=(1.0, 1.0), aspect=(0.75, 1.5))
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(200):
        h, w = scaled_size(cfg, rng)
        ratios.append((h / w) / (384 / 512))
        assert h * w == pytest.approx(384 * 512, rel=0.01)
    assert 0.75 - 0.01 <= min(ratios) < 0.85 and 1.35 < max(ratios) <= 1.5 + 0.01


def test_no_stretch_draws_nothing_more_than_before():
    cfg = AugmentConfig(base_size=(384, 512))
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    h, w = scaled_size(cfg, rng)
    s = reference.uniform(*cfg.scale)
    assert (h, w) == (round(384 * s), round(512 * s))
    assert rng.random() == reference.random()  # the same stream afterwards: resumed runs replay exactly


def test_stretched_crop_has_the_crop_size_and_labels_follow_the_image():
    img = np.zeros((360, 480, 3), np.uint8)
    img[:180] = 200  # top half bright, labelled 1
    label = np.zeros((360, 480), np.uint8)
    label[:180] = 1
    cfg = AugmentConfig(base_size=(384, 512), crop=(320, 320), aspect=(1.5, 1.5), flip=False, photometric=False)
    out, lab = augment(img, label, cfg, np.random.default_rng(1))
    assert out.shape == (320, 320, 3) and lab.shape == (320, 320)
    assert np.mean((lab == 1) == (out[..., 0] > 100)) > 0.99  # bilinear image, nearest labels: a boundary row


@pytest.mark.parametrize("text", ["1.5", "a:b", "2:1", "0:1", "-1:2"])
def test_bad_aspect_ranges_are_config_errors(text):
    with pytest.raises(ConfigError, match="--aspect"):
        parse_aspect(text)


def test_aspect_range_parses():
    assert parse_aspect("0.75:1.5") == (0.75, 1.5) and parse_aspect("1:1") == (1.0, 1.0)
