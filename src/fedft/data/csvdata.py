"""csv:PATH: the user's own text classification data, a CSV file with columns text,label."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fedft.errors import UsageError


def load(path_text: str, test_fraction: float):
    from fedft.data import LabelledText, split_fraction

    path = Path(path_text)
    key = f"data.name = 'csv:{path_text}'"
    if not path.is_file():
        raise UsageError(f"{key}: file does not exist")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
                raise UsageError(f"{key}: needs a header row with columns text,label (found {reader.fieldnames})")
            rows = [(r["text"], r["label"]) for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{key}: not a readable UTF-8 CSV file ({e})") from None
    rows = [(t.strip(), lab.strip()) for t, lab in rows if t and lab and t.strip() and lab.strip()]
    classes = sorted({lab for _, lab in rows})
    if len(classes) < 2:
        raise UsageError(f"{key}: needs at least 2 labels with non-empty text, found {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[lab] for _, lab in rows], dtype=np.int64)
    texts = [t for t, _ in rows]
    sizes = np.bincount(labels, minlength=len(classes))
    if sizes.min() < 2:
        raise UsageError(f"{key}: label {classes[int(sizes.argmin())]!r} has {sizes.min()} example; "
                         f"every label needs at least 2 (one to train, one to test)")
    tr, te = split_fraction(labels, test_fraction)
    pick = lambda idx: LabelledText([texts[i] for i in idx], labels[idx], classes)  # noqa: E731
    return pick(tr), pick(te)
