"""Data sets: raw labelled examples, their tokenized form, and the split into clients."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedft.config import DataConfig


@dataclass
class LabelledText:
    """A raw split: texts[i] has class labels[i] (an index into `classes`)."""
    texts: list[str]
    labels: np.ndarray  # (N,) int64
    classes: list[str]


@dataclass
class Instructions:
    """A raw split of instruction data: chats[i] is a list of {role, content} turns ending with the assistant's
    response; answers[i] the short answers that count as an exact match ([] = not scored for exact match);
    labels[i] the row's group (an index into `classes`: wordnet-instruct's lexicographer file), which label-based
    partitions split by."""
    chats: list[list[dict]]
    answers: list[list[str]]
    labels: np.ndarray  # (N,) int64
    classes: list[str]
    kinds: list[str] | None = None  # what each row asks (wordnet-instruct: define | use | hypernym)

    def pick(self, idx) -> "Instructions":
        idx = np.asarray(idx, dtype=np.int64)
        return Instructions([self.chats[i] for i in idx], [self.answers[i] for i in idx], self.labels[idx],
                            self.classes, None if self.kinds is None else [self.kinds[i] for i in idx])


@dataclass
class TextExamples:
    """Tokenized examples as arrays: every row's token ids padded to the longest row (with pad_id), and each row's
    length; a batch is cut to its own longest row (glosses are short, so padding per batch saves most work)."""
    ids: torch.Tensor  # (N, longest) int64
    labels: torch.Tensor  # (N,) int64
    pad_id: int
    row_lengths: torch.Tensor  # (N,) int64, on the same device as ids

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: np.ndarray | list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows `idx`, padded to the longest of them, on the examples' device."""
        idx = np.asarray(idx, dtype=np.int64)
        longest = int(self.lengths()[idx].max())
        rows = torch.as_tensor(idx, device=self.ids.device)
        ids = self.ids[rows, :longest]
        mask = (torch.arange(longest, device=ids.device) < self.row_lengths[rows, None]).long()
        return {"input_ids": ids, "attention_mask": mask}, self.labels[rows]

    def lengths(self) -> np.ndarray:
        if getattr(self, "_lengths", None) is None:
            self._lengths = self.row_lengths.cpu().numpy()
        return self._lengths

    def to(self, device: torch.device) -> "TextExamples":
        """The same examples with their tensors on `device`, so batches are cut there (no copy per batch)."""
        out = TextExamples(self.ids.to(device), self.labels.to(device), self.pad_id, self.row_lengths.to(device))
        out._lengths = self.lengths()
        return out


def tokenize(data: LabelledText, tokenizer, max_length: int, chunk: int = 65_536) -> TextExamples:
    """The texts' token ids (truncated to max_length) as one padded array, CHUNK texts at a time: the tokenizer's
    Python lists for two million rows at once took 14 GB (measured, benchmarks/scale.py), a chunk's lists are freed
    as soon as its ids are in the array."""
    from itertools import chain

    pad_id = int(tokenizer.pad_token_id or 0)
    encode = _encoder(tokenizer, max_length)
    lengths, flats = [], []
    for i in range(0, len(data.texts), chunk):
        ids = encode(data.texts[i: i + chunk])
        lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
        flats.append(np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths[-1].sum())))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    padded = np.full((len(lengths), longest), pad_id, dtype=np.int64)
    padded[np.arange(longest) < lengths[:, None]] = flat  # row by row, in order
    return TextExamples(torch.from_numpy(padded), torch.as_tensor(data.labels, dtype=torch.long), pad_id,
                        torch.from_numpy(lengths))


def _encoder(tokenizer, max_length: int):
    """texts -> their token id lists, as `tokenizer(texts, truncation=True, max_length=max_length)` gives them. A
    fast tokenizer's Rust backend is called directly (a copy, truncating, not padding): transformers' per-row
    conversion of each encoding into a dict of lists took 60% of tokenising (measured, 65,536 texts: 5.0 s through
    transformers, 2.2 s direct; the ids equal, checked in tests/test_data.py)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda texts: tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_padding()
    own.enable_truncation(max_length)
    batch = getattr(own, "encode_batch_fast", own.encode_batch)  # _fast: without character offsets
    return lambda texts: [e.ids for e in batch(texts)]


def load_data(cfg: DataConfig):
    """The `Loaded` (train, test, natural clients, reading report) of `data.name`, from its registered source. The
    test split is fixed: it depends on the data alone, not on fl.seed."""
    from fedft.data.sources import find

    src, arg = find(cfg.name)
    return src.load(arg, cfg)


def load_dataset(cfg: DataConfig):
    """(train, test) of `data.name`: LabelledText or LabelledImages."""
    got = load_data(cfg)
    return got.train, got.test


def sources_of(kind: str) -> str:
    """The data.name forms that give `kind` (text | image) data, for a message: the built-in sets, then the files."""
    from fedft.data.sources import SOURCES

    sources = [SOURCES.get(n, "") for n in SOURCES.names()]
    own = [s.shown for s in sources if s.kind == kind]
    files = ", ".join(f"{s.name}:" for s in sources if s.kind == "table")
    column = "a text column (data.text_column)" if kind == "text" else "an image column (data.image_column)"
    return f"{' or '.join(own)}, or a file ({files}PATH) with {column}"


def stratified_split(labels: np.ndarray, n_test: list[int], n_train: list[int], seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split: for class c, n_test[c] test indices and at most n_train[c] train indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(len(n_test)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: n_test[c]])
        train.append(idx[n_test[c]: n_test[c] + n_train[c]])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return rng.permutation(train_idx), np.sort(test_idx)


def split_capped(labels: np.ndarray, test_per_class: int, train_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class: min(test_per_class, half) test examples, then at most train_per_class training examples."""
    sizes = np.bincount(labels)
    n_test = [min(test_per_class, int(s) // 2) for s in sizes]
    n_train = [min(train_per_class, int(s) - t) for s, t in zip(sizes, n_test)]
    return stratified_split(labels, n_test, n_train, seed=0)


def split_fraction(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class: round(test_fraction * size) test examples (at least one), the rest for training."""
    sizes = np.bincount(labels)
    n_test = [max(1, int(round(s * test_fraction))) for s in sizes]
    n_train = [int(s) - t for s, t in zip(sizes, n_test)]
    return stratified_split(labels, n_test, n_train, seed=0)
