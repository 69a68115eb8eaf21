"""The split of the training rows over clients, held as two arrays (every client's row indices end to end, and where
each client starts), so a million clients cost two numpy arrays, not a million objects. `clients[c]` is client c's
indices (a view), gathered only when it is asked for."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


class Clients:
    def __init__(self, flat: np.ndarray, offsets: np.ndarray, names: list[str] | None = None) -> None:
        self.flat = np.asarray(flat, dtype=np.int64)  # client 0's rows, then client 1's, ...
        self.offsets = np.asarray(offsets, dtype=np.int64)  # client c: flat[offsets[c]: offsets[c + 1]]
        self.names = names  # natural clients: each one's value of data.client_column
        if len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.flat):
            raise ValueError("offsets must start at 0 and end at len(flat)")

    @classmethod
    def of(cls, arrays: Iterable[np.ndarray], names: list[str] | None = None) -> "Clients":
        """From one index array per client."""
        arrays = [np.asarray(a, dtype=np.int64) for a in arrays]
        flat = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
        return cls.by_size(flat, [len(a) for a in arrays], names)

    @classmethod
    def by_size(cls, flat: np.ndarray, sizes: np.ndarray, names: list[str] | None = None) -> "Clients":
        return cls(flat, np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]), names)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, c):
        if isinstance(c, slice):
            return [self[i] for i in range(*c.indices(len(self)))]
        c = int(c)
        if c < 0:
            c += len(self)
        if not 0 <= c < len(self):
            raise IndexError(f"client {c} of {len(self)}")
        return self.flat[self.offsets[c]: self.offsets[c + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for c in range(len(self)):
            yield self.flat[self.offsets[c]: self.offsets[c + 1]]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def owner(self) -> np.ndarray:
        """For each position of `flat`, its client."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes)

    def summary(self) -> dict:
        """What results.json keeps of the clients' sizes (the full table goes to clients.parquet)."""
        s = self.sizes
        if not len(s):
            return {"count": 0}
        return {"count": int(len(s)), "rows": int(s.sum()), "min": int(s.min()), "median": float(np.median(s)),
                "max": int(s.max()), "empty": int((s == 0).sum())}

    def __eq__(self, other) -> bool:
        return (isinstance(other, Clients) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.flat, other.flat))

    def __repr__(self) -> str:
        return f"Clients({len(self)} clients, {len(self.flat)} rows)"
