"""Semantic segmentation datasets on disk: CamVid, Cityscapes, ADE20K and generic image/mask folders.

numpy + OpenCV only, so evaluation runs on a robot without torch. Labels come back with the
dataset's own ignore value remapped to :data:`IGNORE` so losses and metrics need one rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segrt.runtime.errors import DatasetError
from segrt.runtime.image_header import check_image_file
from segrt.runtime.metadata import default_palette

IGNORE = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip


@dataclass
class SegDataset:
    """A list of (image, label) file pairs with the class names and palette that describe them."""

    name: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    images: list[Path]
    labels: list[Path]
    ignore_index: int = IGNORE  # value in the label files that means "unlabelled"
    label_offset: int = 0  # added to labels after ignore handling (ADE20K's reduce-zero-label)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if not self.images:
            raise DatasetError(f"{self.name}: no images found")

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, i: int) -> np.ndarray:
        """BGR uint8, as OpenCV and cameras deliver frames."""
        check_image_file(self.images[i])  # the header's size, before OpenCV allocates the pixels
        img = cv2.imread(str(self.images[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"cannot read image {self.images[i]}")
        return img

    def read_label(self, i: int) -> np.ndarray:
        check_image_file(self.labels[i], f"label {self.labels[i]}")
        raw = cv2.imread(str(self.labels[i]), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"cannot read label {self.labels[i]}")
        if raw.ndim != 2:
            raise DatasetError(f"label {self.labels[i]} has shape {raw.shape}; expected a single-channel index map")
        raw = raw.astype(np.int32)
        ignore = raw == self.ignore_index
        label = raw + self.label_offset
        label[ignore | (label < 0) | (label >= len(self.classes))] = IGNORE
        return label.astype(np.uint8)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, label = self.read_image(i), self.read_label(i)
        if img.shape[:2] != label.shape:
            raise DatasetError(f"{self.images[i].name}: image {img.shape[:2]} and label {label.shape} differ in size")
        return img, label


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"expected a folder at {folder}")
    # Regular files only: a FIFO or device named like an image would block the first read forever.
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _pair_by_stem(images: list[Path], label_dir: Path, label_name) -> list[Path]:
    labels = []
    for img in images:
        lab = label_dir / label_name(img)
        if not lab.exists():
            raise DatasetError(f"no label for {img.name}: expected {lab}")
        labels.append(lab)
    return labels


def camvid(root: str | Path, split: str = "train") -> SegDataset:
    """``ROOT/{split}/*.png`` with ``ROOT/{split}annot/*.png`` (class indices, 11 = unlabelled)."""
    root = Path(root)
    images = _images_in(root / split)
    labels = _pair_by_stem(images, root / f"{split}annot", lambda p: p.name)
    classes, palette, ignore = CAMVID_CLASSES, CAMVID_PALETTE, 11
    info = root / "classes.json"
    if info.exists():
        meta = json.loads(info.read_text())
        classes = meta.get("classes", classes)
        palette = [tuple(c) for c in meta.get("palette_rgb", palette)]
        ignore = meta.get("ignore_index", ignore)
    return SegDataset("camvid", list(classes), palette, images, labels, ignore_index=ignore)


def cityscapes(root: str | Path, split: str = "train") -> SegDataset:
    """``leftImg8bit/{split}/CITY/*_leftImg8bit.png`` with ``gtFine/.../*_gtFine_labelTrainIds.png``."""
    root = Path(root)
    img_root = root / "leftImg8bit" / split
    if not img_root.is_dir():
        raise DatasetError(f"expected Cityscapes images under {img_root}")
    images = sorted(img_root.glob("*/*_leftImg8bit.png"))
    labels = []
    for img in images:
        lab = root / "gtFine" / split / img.parent.name / img.name.replace("_leftImg8bit", "_gtFine_labelTrainIds")
        if not lab.exists():
            raise DatasetError(f"no labelTrainIds for {img.name} (expected {lab}); "
                               "run cityscapesscripts' createTrainIdLabelImgs")
        labels.append(lab)
    return SegDataset("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, images, labels, ignore_index=255)


def ade20k(root: str | Path, split: str = "training") -> SegDataset:
    """ADEChallengeData2016: ``images/{split}/*.jpg`` with ``annotations/{split}/*.png``; 0 = other (ignored)."""
    root = Path(root)
    split = {"train": "training", "val": "validation"}.get(split, split)
    images = _images_in(root / "images" / split)
    labels = _pair_by_stem(images, root / "annotations" / split, lambda p: p.stem + ".png")
    names = [f"class_{i}" for i in range(150)]
    info = root / "objectInfo150.csv"
    if info.exists():
        rows = info.read_text().splitlines()[1:]
        names = [r.split(",")[-1].split(";")[0].strip().strip('"') for r in rows][:150] or names
    return SegDataset("ade20k", names, default_palette(150), images, labels, ignore_index=0, label_offset=-1)


def folder_pair(root: str | Path, split: str = "", classes: list[str] | None = None,
                ignore_index: int = 255) -> SegDataset:
    """``ROOT/[split/]images/*`` with ``ROOT/[split/]masks/<stem>.png``; classes from ``classes.json``/``.txt``."""
    base = Path(root) / split if split else Path(root)
    images = _images_in(base / "images")
    labels = _pair_by_stem(images, base / "masks", lambda p: p.stem + ".png")
    palette = None
    for info in (base / "classes.json", Path(root) / "classes.json"):
        if classes is None and info.exists():
            meta = json.loads(info.read_text())
            classes, palette = meta["classes"], meta.get("palette_rgb")
            ignore_index = meta.get("ignore_index", ignore_index)
    for info in (base / "classes.txt", Path(root) / "classes.txt"):
        if classes is None and info.exists():
            classes = [line.strip() for line in info.read_text().splitlines() if line.strip()]
    if classes is None:
        raise DatasetError(f"{root}: pass class names or add classes.json / classes.txt")
    colours = [tuple(c) for c in palette] if palette else default_palette(len(classes))
    return SegDataset("folder", list(classes), colours,
                      images, labels, ignore_index=ignore_index)


FORMATS = {"camvid": camvid, "cityscapes": cityscapes, "ade20k": ade20k, "folder": folder_pair}


def open_dataset(root: str | Path, fmt: str = "camvid", split: str = "val") -> SegDataset:
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {sorted(FORMATS)}")
    if not Path(root).exists():
        raise DatasetError(f"dataset root {root} does not exist")
    return FORMATS[fmt](root, split)
