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


class TextExamples:
    """Tokenized examples as arrays: every row's token ids in one padded array (int32, pad_id past the row's end),
    and each row's length; a batch is cut to its own longest row (glosses are short, so padding per batch saves most
    work). Rows are tokenised when first used (batched, or their lengths asked for), CHUNK at a time and once: a
    million clients of which a round samples ten do not wait for two million rows to be tokenised before the first
    round (benchmarks/scale.py). The ids do not depend on when or in what order rows were tokenised."""

    def __init__(self, texts, labels, encoder: "Encoder", pad_id: int, width: int) -> None:
        self.texts, self.encoder, self.pad_id = texts, encoder, int(pad_id)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.ids = torch.full((len(texts), width), self.pad_id, dtype=torch.int32)
        self.row_lengths = torch.zeros(len(texts), dtype=torch.int64)
        self._lengths = np.zeros(len(texts), dtype=np.int64)
        self._done = np.zeros(len(texts), dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: np.ndarray | list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Rows `idx`, padded to the longest of them, on the examples' device."""
        idx = np.asarray(idx, dtype=np.int64)
        longest = int(self.lengths(idx)[idx].max())
        rows = torch.as_tensor(idx, device=self.ids.device)
        ids = self.ids[rows, :longest].long()
        mask = (torch.arange(longest, device=ids.device) < self.row_lengths[rows, None]).long()
        return {"input_ids": ids, "attention_mask": mask}, self.labels[rows]

    def lengths(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Every row's token count, after tokenising rows `idx` (default: all) if they were not yet; a row not yet
        tokenised reads 0, so index the result with the rows asked for."""
        todo = np.flatnonzero(~self._done) if idx is None else np.unique(np.asarray(idx, dtype=np.int64))
        todo = todo[~self._done[todo]]
        for i in range(0, len(todo), CHUNK):
            self._tokenise(todo[i: i + CHUNK])
        return self._lengths

    def _tokenise(self, rows: np.ndarray) -> None:
        from itertools import chain

        ids = self.encoder([self.texts[i] for i in rows])
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        width = self.ids.shape[1]
        if len(lengths) and lengths.max() > width:
            raise ValueError(f"the tokenizer gave {int(lengths.max())} ids, more than the {width} it truncates to")
        block = np.full((len(rows), width), self.pad_id, dtype=np.int32)
        block[np.arange(width) < lengths[:, None]] = flat  # row by row, in order
        at = torch.as_tensor(rows, device=self.ids.device)
        self.ids[at] = torch.from_numpy(block).to(self.ids.device)
        self.row_lengths[at] = torch.from_numpy(lengths).to(self.ids.device)
        self._lengths[rows] = lengths
        self._done[rows] = True

    def to(self, device: torch.device) -> "TextExamples":
        """These examples with their tensors on `device`, so batches are cut there (no copy per batch)."""
        self.ids, self.labels, self.row_lengths = (t.to(device) for t in (self.ids, self.labels, self.row_lengths))
        return self


CHUNK = 65_536  # texts tokenised at once: the tokenizer's Python lists for two million rows at once took 14 GB


def tokenize(data: LabelledText, tokenizer, max_length: int) -> TextExamples:
    """The texts' token ids, truncated to max_length (tokenised as rows are first used)."""
    return TextExamples(data.texts, data.labels, Encoder(tokenizer, max_length), tokenizer.pad_token_id or 0,
                        max_length)


class Encoder:
    """texts -> their token id lists, as `tokenizer(texts, truncation=True, max_length=max_length)` gives them. A
    fast tokenizer's Rust backend is called directly (a copy, truncating, not padding): transformers' per-row
    conversion of each encoding into a dict of lists took 60% of tokenising (measured, 65,536 texts: 5.0 s through
    transformers, 2.2 s direct; the ids equal, checked in tests/test_data.py). Picklable (Flower ships examples)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.max_length = max_length
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.tokenizer = tokenizer if backend is None else None
        if backend is not None:
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(backend.to_str())
            self.backend.no_padding()
            self.backend.enable_truncation(max_length)

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if self.tokenizer is not None:
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # _fast: no char offsets
        return [e.ids for e in encode(texts)]


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
