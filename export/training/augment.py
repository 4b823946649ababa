"""Training augmentation for segmentation: random scale (and, optionally, aspect ratio), crop, flip and
photometric jitter.

numpy/OpenCV on uint8 images, driven by an explicit ``numpy.random.Generator`` so that a resumed
run replays exactly the same crops as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segrt.runtime.datasets import IGNORE


@dataclass
class AugmentConfig:
    base_size: tuple[int, int] = (384, 512)  # (H, W) the image is first resized to
    crop: tuple[int, int] = (320, 320)
    scale: tuple[float, float] = (0.75, 1.5)
    # Height/width stretch factor range (log-uniform). A model that will see frames squeezed to another aspect
    # ratio than the one it was trained at (a 4:3 camera fed at 512x512, say) learns that geometry from it.
    # (1, 1) draws nothing, so runs without it replay exactly as before.
    aspect: tuple[float, float] = (1.0, 1.0)
    flip: bool = True
    photometric: bool = True


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter, each applied with probability 1/2."""
    out = img.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-32, 32)
    if rng.random() < 0.5:
        out *= rng.uniform(0.5, 1.5)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.5 or rng.random() < 0.5:
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.int16)
        if rng.random() < 0.5:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if rng.random() < 0.5:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return out


def scaled_size(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int]:
    """The (H, W) the image is resized to before cropping: base size x a random scale, stretched by a random
    aspect factor (height x sqrt(a), width / sqrt(a): the area stays the scale's) when ``cfg.aspect`` allows."""
    s = rng.uniform(*cfg.scale)
    a = 1.0
    if tuple(cfg.aspect) != (1.0, 1.0):
        lo, hi = cfg.aspect
        a = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return int(round(cfg.base_size[0] * s * np.sqrt(a))), int(round(cfg.base_size[1] * s / np.sqrt(a)))


def augment(img: np.ndarray, label: np.ndarray, cfg: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = scaled_size(cfg, rng)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    ch, cw = cfg.crop
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        img = cv2.copyMakeBorder(img, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=IGNORE)
    # Up to 10 tries for a crop where no single class covers more than 75% (mmseg's cat_max_ratio),
    # so that batches are not dominated by sky and road.
    for _ in range(10):
        y = int(rng.integers(0, img.shape[0] - ch + 1))
        x = int(rng.integers(0, img.shape[1] - cw + 1))
        crop_label = label[y : y + ch, x : x + cw]
        counts = np.bincount(crop_label[crop_label != IGNORE].ravel(), minlength=1)
        if len(counts) > 1 and counts.max() / max(counts.sum(), 1) < 0.75:
            break
    img, label = img[y : y + ch, x : x + cw], crop_label
    if cfg.flip and rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    if cfg.photometric:
        img = photometric(np.ascontiguousarray(img), rng)
    return np.ascontiguousarray(img), np.ascontiguousarray(label)
