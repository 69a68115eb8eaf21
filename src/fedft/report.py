"""Result files, each written atomically (a temporary file renamed into place): results.json, rounds.csv,
curves.png. A crash never leaves a half-written file."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

ROUND_COLUMNS = ["round", "accuracy", "loss", "train_loss", "bytes_up", "bytes_down", "clients", "seconds", "sampled",
                 "returned", "dropped", "late", "aggregated", "epsilon", "proxy_accuracy"]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp_path) then rename over `path`: readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before it takes the real name
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # and the rename itself
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n"))


CLIENTS_TABLE = "clients.parquet"


def write_clients(path: Path, clients, names: list[str] | None = None) -> None:
    """Every client's number of training rows (and its name, for natural clients), one row each, as parquet: the
    part of the record that grows with the clients stays out of results.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"client": pa.array(range(len(clients)), type=pa.int64()), "rows": pa.array(clients.sizes)}
    if names is not None:
        columns["name"] = pa.array(names, type=pa.string())
    atomic_write(path, lambda p: pq.write_table(pa.table(columns), p))


def read_clients(run_dir: Path) -> dict[str, list]:
    """clients.parquet of a run folder as columns (client, rows, name)."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(run_dir) / CLIENTS_TABLE).to_pydict()


def write_csv(path: Path, rounds: list[dict]) -> None:
    def write(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            cols = [c for c in ROUND_COLUMNS if c != "proxy_accuracy" or any(r.get(c) is not None for r in rounds)]
            w.writerow(cols)
            for r in rounds:
                w.writerow(["" if r.get(c) is None else (len(r[c]) if c == "clients" else r[c]) for c in cols])

    atomic_write(path, write)


def selection_counts(rounds: list[dict], num_layers: int):
    """(layers, rounds): how many clients trained each layer in each round (method layers)."""
    import numpy as np

    counts = np.zeros((num_layers, len(rounds)), dtype=np.int64)
    for j, r in enumerate(rounds):
        for layers in (r.get("selection") or {}).values():
            counts[layers, j] += 1
    return counts


def plot_selection(path: Path, rounds: list[dict], num_layers: int, title: str) -> None:
    """Heat map of selection_counts: layer against round, colour = clients that trained the layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = selection_counts(rounds, num_layers)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(rounds) + 2), max(3, 0.35 * num_layers + 1.5)))
    im = ax.imshow(counts, aspect="auto", origin="lower", cmap="viridis",
                   extent=(0.5, len(rounds) + 0.5, -0.5, num_layers - 0.5))
    fig.colorbar(im, ax=ax, label="clients that trained the layer")
    ax.set(xlabel="round", ylabel="layer", title=title)
    ax.set_yticks(range(num_layers))
    if len(rounds) <= 30:
        ax.set_xticks(range(1, len(rounds) + 1))
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
