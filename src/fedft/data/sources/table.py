"""What every file source shares: columns (read by pyarrow or datasets) -> labelled text or images, with the column
mapping (data.text_column, data.label_column, data.image_column, data.client_column), the labels' classes, each
row's natural client, the rows dropped and why, and the split into train and test (a given data.test, or a held-out
share of each class).

Not a source itself (registers nothing): the csv, tsv, jsonl, parquet and hf sources read a table and call `loaded`.
"""
from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fedft.errors import UsageError


def loaded(read: Callable[[Path, str], dict[str, list]], prefix: str, path_text: str, cfg):
    """The Loaded of source `prefix` for `data.name = prefix:path_text`; `read(path, key)` gives the columns."""
    from fedft.data.sources import Loaded

    key = f"data.name = '{prefix}:{path_text}'"
    path = Path(path_text)
    columns = read(path, key)
    from fedft.data.sources.instructions import is_instructions, loaded_instructions

    if is_instructions(columns, cfg):  # chats for the instruct task, not labelled rows
        test_columns, test_key = None, ""
        if cfg.test:
            test_read, test_path, test_key = resolve_test(cfg.test)
            test_columns = test_read(test_path, test_key)
        return loaded_instructions(columns, cfg, key, test_columns, test_key)
    train = rows_of(columns, cfg, key, path.parent if path.is_file() else path, natural=cfg.partition == "natural")
    if cfg.test:
        test_read, test_path, test_key = resolve_test(cfg.test)
        test = rows_of(test_read(test_path, test_key), cfg, test_key,
                       test_path.parent if test_path.is_file() else test_path, natural=False)
        unknown = sorted(set(test.label_values) - set(train.classes), key=_label_order)
        if unknown:
            raise UsageError(f"{test_key}: labels the training data lacks: {', '.join(map(repr, unknown[:5]))} "
                             f"(training labels: {', '.join(map(repr, train.classes[:10]))})")
        test.relabel(train.classes)
        tr_idx, te, test_report = np.arange(len(train.labels)), test.split(np.arange(len(test.labels))), test.report
    else:
        from fedft.data import split_fraction

        counts = np.bincount(train.labels, minlength=len(train.classes))
        if counts.min() < 2:
            raise UsageError(f"{key}: label {train.classes[int(counts.argmin())]!r} has {counts.min()} example; "
                             f"every label needs at least 2 (one to train, one to test), or give data.test")
        tr_idx, te_idx = split_fraction(train.labels, cfg.test_fraction)
        te, test_report = train.split(te_idx), None
    report = {**train.report, "test": "data.test" if cfg.test else f"{cfg.test_fraction:g} of each class held out"}
    if test_report:
        report["test_rows"] = test_report
    groups = train.groups[tr_idx] if train.groups is not None else None
    if groups is not None:
        empty = np.flatnonzero(np.bincount(groups, minlength=len(train.group_names)) == 0)
        if len(empty):
            raise UsageError(f"{key}: client {train.group_names[empty[0]]!r} ({cfg.client_column}) has no training "
                             f"rows left once the test rows are held out; give data.test, or drop that client's rows")
    return Loaded(train.split(tr_idx), te, groups, list(train.group_names), report)


def resolve_test(spec: str):
    """data.test as (read, path, key): a prefix (csv:PATH) or a path whose suffix names the format."""
    from fedft.data.sources import SOURCES

    head, sep, rest = spec.partition(":")
    if sep and head in READERS:
        path = Path(rest)
    else:
        path, head = Path(spec), None
        suffix = path.suffix.lower()
        head = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                ".parquet": "parquet", ".pq": "parquet"}.get(suffix)
        if head is None and path.is_dir():
            head = "hf"
    key = f"data.test = {spec!r}"
    if head is None:
        raise UsageError(f"{key}: unknown format; name it csv:, tsv:, jsonl:, parquet: or hf: (or use one of the "
                         f"suffixes .csv .tsv .jsonl .parquet, or a datasets folder)")
    SOURCES.get(head, "data.test")  # registered
    return READERS[head], path, key


READERS: dict[str, Callable[[Path, str], dict[str, list]]] = {}  # filled by each file source


class Rows:
    """The rows kept, with labels as class indices, and their natural clients."""

    def __init__(self, texts, images, label_values, groups, group_names, report):
        self.texts, self.images, self.label_values = texts, images, label_values
        self.classes = sorted(set(label_values), key=_label_order)
        self.relabel(self.classes)
        self.groups, self.group_names, self.report = groups, group_names, report

    def relabel(self, classes: list[str]) -> None:
        index = {c: i for i, c in enumerate(classes)}
        self.classes = classes
        self.labels = np.array([index[v] for v in self.label_values], dtype=np.int64)

    def split(self, idx: np.ndarray):
        from fedft.data import LabelledText
        from fedft.data.images import LabelledImages

        if self.texts is not None:
            return LabelledText([self.texts[i] for i in idx], self.labels[idx], self.classes)
        return LabelledImages(self.images[torch.as_tensor(idx, dtype=torch.long)].contiguous(), self.labels[idx],
                              self.classes)


def rows_of(columns: dict[str, list], cfg, key: str, base: Path, natural: bool) -> Rows:
    """Check the mapped columns, drop what cannot be used (counted by reason), decode images."""
    found = list(columns)
    if not found or not len(next(iter(columns.values()))):
        raise UsageError(f"{key}: the file has no rows")

    def need(col: str, setting: str) -> list:
        if col not in columns:
            raise UsageError(f"{key}: no column {col!r} ({setting}); the file has columns {found}")
        return columns[col]

    if natural and not cfg.client_column:
        raise UsageError("data.partition = 'natural' needs data.client_column (the column naming each row's client)")
    labels = need(cfg.label_column, "data.label_column")
    is_text = cfg.text_column in columns or cfg.image_column not in columns
    values = need(cfg.text_column, "data.text_column") if is_text else need(cfg.image_column, "data.image_column")
    clients = need(cfg.client_column, "data.client_column") if natural else None
    dropped: Counter = Counter()
    keep, label_values = [], []
    for i, (x, y) in enumerate(zip(values, labels)):
        x_empty = x is None or (isinstance(x, str) and not x.strip())
        y_text = _label_text(y)
        if x_empty and not y_text and (clients is None or not _label_text(clients[i])):
            dropped["empty row"] += 1
        elif x_empty:
            dropped["empty text" if is_text else "no image"] += 1
        elif not y_text:
            dropped["no label"] += 1
        else:
            keep.append(i)
            label_values.append(y_text)
    if not keep:
        raise UsageError(f"{key}: no usable rows ({', '.join(f'{n} {why}' for why, n in dropped.items())})")
    label_values = _fold_case(label_values, cfg.label_case, key, cfg.label_column)
    if len(set(label_values)) < 2:
        raise UsageError(f"{key}: the label column {cfg.label_column!r} has a single class "
                         f"({label_values[0]!r}); classification needs at least 2")
    report = {"rows_read": len(labels), "rows_used": len(keep), "dropped": dict(dropped)}
    texts = [str(values[i]).strip() for i in keep] if is_text else None
    images = None if is_text else _decode_images([values[i] for i in keep], key, base, [i for i in keep])
    groups, group_names = None, []
    if natural:
        groups, group_names = _client_ids([clients[i] for i in keep], keep, key, cfg.client_column)
    return Rows(texts, images, label_values, groups, group_names, report)


def _client_ids(values: list, rows: list[int], key: str, column: str) -> tuple[np.ndarray, list[str]]:
    """Each kept row's client as an index into the clients' names (integers by value, others by text). An integer
    column goes through numpy (np.unique): the per-row path below took about 6 s and 120 MiB more for a million clients
    over two million rows (benchmarks/scale.py)."""
    ints = np.asarray(values) if values and all(type(v) is int for v in values) else None  # not bool
    if ints is not None and ints.dtype.kind in "iu":
        uniq, groups = np.unique(ints, return_inverse=True)
        return groups.astype(np.int64).reshape(-1), [str(v) for v in uniq.tolist()]
    names = [_label_text(v) for v in values]
    for j, name in enumerate(names):
        if not name:
            raise UsageError(f"{key}: row {rows[j] + 1} has no client ({column!r} is empty); every row needs one "
                             f"under data.partition = 'natural'")
    group_names = sorted(set(names), key=_label_order)
    index = {g: j for j, g in enumerate(group_names)}
    return np.array([index[g] for g in names], dtype=np.int64), group_names


def _label_text(v) -> str:
    """A label or client value as text: integers (also 3.0 from a float column) without a decimal point."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return ""
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v).strip()


def _label_order(v: str):
    """Integer labels by value (0, 1, 2, 10), others by text; integers first."""
    try:
        return (0, int(v), "")
    except ValueError:
        return (1, 0, v)


def _fold_case(values: list[str], mode: str, key: str, column: str) -> list[str]:
    if mode == "fold":
        return [v.lower() for v in values]
    spellings: dict[str, set[str]] = {}
    for v in set(values):
        spellings.setdefault(v.lower(), set()).add(v)
    twins = [sorted(s) for s in spellings.values() if len(s) > 1]
    if twins:
        print(f"fedft: warning: {key}: labels that differ only in case are separate classes "
              f"({', '.join(twins[0])}); set data.label_case = 'fold' to merge them", file=sys.stderr, flush=True)
    return values


def _decode_images(cells: list, key: str, base: Path, rows: list[int]) -> torch.Tensor:
    """Image cells (encoded bytes, {"bytes", "path"} as a datasets Image feature stores them, or a file path
    relative to the data file) -> (N, C, H, W) uint8; one size and one colour mode for all."""
    from fedft.data.images import SameImages, read_image

    arrays, mode, same = [], None, SameImages(key)
    for cell, row in zip(cells, rows):
        where = f"row {row + 1}"
        if isinstance(cell, dict):
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            source = io.BytesIO(cell)
        else:
            p = Path(str(cell))
            source = p if p.is_absolute() else base / p
            where += f" ({cell})"
        arr, mode = read_image(source, key, where)
        same.check(arr, mode, where)
        arrays.append(arr)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1) if mode == "L" else stacked.permute(0, 3, 1, 2).contiguous()
