"""Image data sets (fashion-mnist, digits, imagefolder:PATH) and their batches, with torch alone (no torchvision).

Images are kept as uint8 at their own size; a batch is resized to `data.image_size` (bilinear, antialiased),
grey images are repeated to the model's three channels, and the model's mean/std normalisation is applied.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedft.errors import UsageError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class LabelledImages:
    """A raw split: images[i] (C, H, W) uint8 has class labels[i]."""
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: list[str]


@dataclass
class ImageExamples:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    size: int  # side the model sees
    mean: torch.Tensor  # (3, 1, 1)
    std: torch.Tensor  # (3, 1, 1)
    channels: int = 3

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "ImageExamples":
        """The same examples on `device`: batches are cut, resized and normalised there."""
        return ImageExamples(self.images.to(device), self.labels.to(device), self.size, self.mean.to(device),
                             self.std.to(device), self.channels)

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=self.images.device)
        x = self.images[idx].float() / 255.0  # (B, C, H, W)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                align_corners=False, antialias=True)
        return {"pixel_values": (x - self.mean) / self.std}, self.labels[idx]


def to_examples(data: LabelledImages, size: int, mean: list[float], std: list[float], channels: int) -> ImageExamples:
    c = data.images.shape[1]
    if c != channels and not (c == 1 and channels == 3):
        raise UsageError(f"the images have {c} channel(s) but the model takes {channels}: "
                         f"grayscale images work with 1- or 3-channel models, RGB images need 3")
    m = torch.tensor(mean[:channels], dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std[:channels], dtype=torch.float32).view(-1, 1, 1)
    return ImageExamples(data.images, torch.as_tensor(data.labels, dtype=torch.long), size, m, s, channels)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(cfg, root: Path = FASHION_DIR):
    """Fashion-MNIST from Debian's dataset-fashion-mnist: at most train_per_class / test_per_class per class,
    seeded; the test examples come from the official test file."""
    from fedft.data import stratified_split

    files = {k: root / f"{k}.gz" for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UsageError(f"data.name = 'fashion-mnist' needs Debian's dataset-fashion-mnist ({missing[0]} is "
                         f"missing): sudo apt-get install dataset-fashion-mnist")
    out = []
    for split, n_per_class in (("train", cfg.train_per_class), ("t10k", cfg.test_per_class)):
        images = _read_idx(files[f"{split}-images-idx3-ubyte"])
        labels = _read_idx(files[f"{split}-labels-idx1-ubyte"]).astype(np.int64)
        keep, _ = stratified_split(labels, [0] * 10, [n_per_class] * 10, seed=0)
        out.append(LabelledImages(torch.from_numpy(images[keep].copy()).unsqueeze(1), labels[keep], FASHION_CLASSES))
    return out[0], out[1]


def load_digits(cfg):
    """scikit-learn's 8x8 digits (1,797 images), a seeded stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    from fedft.data import split_capped

    d = sk_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = d.target.astype(np.int64)
    tr, te = split_capped(labels, cfg.test_per_class, cfg.train_per_class)
    classes = [str(i) for i in range(10)]
    return LabelledImages(images[tr], labels[tr], classes), LabelledImages(images[te], labels[te], classes)


def read_image(source, key: str, where: str) -> tuple[np.ndarray, str]:
    """One image file or buffer -> (H, W) or (H, W, 3) uint8 and its mode (L or RGB). 16-bit greyscale is scaled to
    8 bits (PIL's own conversion would clip it to black and white)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im).astype(np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                return np.round(arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L"
            im_mode = "L" if im.mode in ("1", "L", "F", "LA") else "RGB"
            return np.asarray(im.convert(im_mode)), im_mode
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"{key}: cannot read image {where} ({str(e).splitlines()[0]})") from None


class SameImages:
    """Checks that every image has the first one's size and colour mode; `where` names each image in the message."""

    def __init__(self, key: str) -> None:
        self.key, self.first = key, None

    def check(self, arr: np.ndarray, mode: str, where: str) -> None:
        if self.first is None:
            self.first = (arr.shape[:2], mode, where)
        shape, first_mode, first = self.first
        if mode != first_mode:
            raise UsageError(f"{self.key}: grayscale/RGB mismatch: {first} is {first_mode} but {where} is {mode}; "
                             f"convert them to one mode")
        if arr.shape[:2] != shape:
            raise UsageError(f"{self.key}: images of different sizes: {first} is {shape[1]}x{shape[0]} but {where} "
                             f"is {arr.shape[1]}x{arr.shape[0]}; resize them to one size")


def load_image_folder(path_text: str, test_fraction: float):
    """imagefolder:PATH, one sub-folder per class (hidden folders such as .ipynb_checkpoints are skipped). All
    images must share one size and one colour mode."""
    from fedft.data import split_fraction

    key = f"data.name = 'imagefolder:{path_text}'"
    root = Path(path_text)
    if not root.is_dir():
        raise UsageError(f"{key}: folder does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    arrays, labels, mode, same = [], [], None, SameImages(key)
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith("."):
                continue
            where = str(f.relative_to(root))
            arr, mode = read_image(f, key, where)
            same.check(arr, mode, where)
            arrays.append(arr)
            labels.append(label)
    if not arrays:
        raise UsageError(f"{key}: no images found (expected PATH/<class>/<image>.png|jpg|...)")
    counts = np.bincount(labels, minlength=len(classes))
    if len(classes) < 2 or counts.min() < 2:
        raise UsageError(f"{key}: needs at least 2 class folders with at least 2 images each "
                         f"(found {dict(zip(classes, counts.tolist()))})")
    stacked = np.stack(arrays)
    images = torch.from_numpy(stacked).unsqueeze(1) if mode == "L" else torch.from_numpy(stacked).permute(0, 3, 1, 2)
    labels_np = np.array(labels, dtype=np.int64)
    tr, te = split_fraction(labels_np, test_fraction)
    return (LabelledImages(images[tr].contiguous(), labels_np[tr], classes),
            LabelledImages(images[te].contiguous(), labels_np[te], classes))
