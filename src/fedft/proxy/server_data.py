"""The server's own unlabelled data for FedPFT's alignment (proxy.distill_data).

The server must never distil on a client's data or on the test set. Each source is read whole, and every example
identical to one of the run's own (its training split, which the clients hold, and its test split) is left out:
texts by their string, images by their pixels. So the rule holds whatever the source and the run's data are, also
when both name the same data set (fashion-mnist on fashion-mnist, digits on digits, a file that shares lines with
the clients' CSV), where the sources' own seeded splits would hand the server the clients' examples.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedft.errors import UsageError

TEXT_SOURCES = ("wordnet-verbs", "file:PATH")
IMAGE_SOURCES = ("digits", "fashion-mnist")
MIN_EXAMPLES = 8


@dataclass
class ServerPool:
    """The alignment data as a raw split (labels all 0) and what results.json says of it."""
    raw: object  # LabelledText | LabelledImages
    source: str
    left_out: int  # examples of the source identical to one of the run's own, left out

    def describe(self) -> dict:
        n = len(self.raw.texts) if hasattr(self.raw, "texts") else len(self.raw.images)
        return {"data": self.source, "examples": n, "left_out_as_run_data": self.left_out}


def server_pool(name: str, modality: str, held=(), limit: int = 5000, seed: int = 0) -> ServerPool:
    """Up to `limit` examples (seeded) of source `name` for a `modality` model, none identical to an example of the
    raw splits in `held`."""
    if name == "auto":
        name = "wordnet-verbs" if modality == "text" else "digits"
    if modality == "text" and (name == "wordnet-verbs" or name.startswith("file:")):
        from fedft.data import LabelledText

        texts = _wordnet_verbs() if name == "wordnet-verbs" else _read_lines(name[5:])
        own = {t for split in held for t in getattr(split, "texts", ())}
        free = [t for t in texts if t not in own]
        keep = _sample(free, limit, seed, name, len(texts))
        return ServerPool(LabelledText(keep, np.zeros(len(keep), dtype=np.int64), ["unlabelled"]), name,
                          len(texts) - len(free))
    if modality == "image" and name in IMAGE_SOURCES:
        from fedft.data.images import LabelledImages

        images = _digits() if name == "digits" else _fashion_mnist_train()
        own = {img.numpy().tobytes() for split in held for img in getattr(split, "images", ())
               if tuple(img.shape) == tuple(images.shape[1:])}
        free = [i for i in range(len(images)) if images[i].numpy().tobytes() not in own]
        idx = _sample(free, limit, seed, name, len(images))
        return ServerPool(LabelledImages(images[torch.as_tensor(idx, dtype=torch.long)],
                                         np.zeros(len(idx), dtype=np.int64), ["unlabelled"]),
                          name, len(images) - len(free))
    allowed = TEXT_SOURCES if modality == "text" else IMAGE_SOURCES
    raise UsageError(f"proxy.distill_data = {name!r}: for {'a text' if modality == 'text' else 'an image'} model use "
                     f"auto, {', '.join(allowed)}")


def _sample(items: list, limit: int, seed: int, name: str, total: int) -> list:
    if len(items) < MIN_EXAMPLES:
        raise UsageError(f"proxy.distill_data = {name!r}: {len(items)} of its {total} examples are left once those "
                         f"identical to the run's own training and test examples are taken out; the server needs at "
                         f"least {MIN_EXAMPLES}: choose another source")
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.permutation(len(items))[:limit])]


def _wordnet_verbs() -> list[str]:
    from fedft.data.wordnet import read_glosses

    return [g for _, g in read_glosses(Path("/usr/share/wordnet/data.verb"))]


def _read_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "is not a regular file" if p.exists() else "does not exist"
        raise UsageError(f"proxy.distill_data = 'file:{path}': {what}")
    lines = [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if len(lines) < MIN_EXAMPLES:
        raise UsageError(f"proxy.distill_data = 'file:{path}': has {len(lines)} non-empty lines; need at least "
                         f"{MIN_EXAMPLES}")
    return lines


def _digits() -> torch.Tensor:
    """All 1,797 of scikit-learn's digits, as the digits data set loads them."""
    from fedft.config import DataConfig
    from fedft.data.images import load_digits

    return load_digits(DataConfig(train_per_class=10 ** 6, test_per_class=0))[0].images


def _fashion_mnist_train() -> torch.Tensor:
    """Every image of Fashion-MNIST's training file (the run's own are left out by identity afterwards)."""
    from fedft.config import DataConfig
    from fedft.data.images import load_fashion_mnist

    return load_fashion_mnist(DataConfig(train_per_class=6000, test_per_class=1))[0].images
