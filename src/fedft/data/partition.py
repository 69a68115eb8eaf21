"""Split training examples over clients, then cap shots per class.

The splits are flwr-datasets' partitioners' own (IidPartitioner, DirichletPartitioner with self-balancing,
PathologicalPartitioner in first-deterministic mode, NaturalIdPartitioner), computed here with numpy in one pass, draw
for draw from the same random generator, so they give the same clients with the same indices in the same order
(tests/test_partition.py checks it against the partitioners). Written by hand because the partitioners cannot
scale to many rows and clients: they read the label column through a Hugging Face Dataset (54 s for 2,000,000 rows
with datasets 4.8, measured on the 2-core CPU) and loop over every client for every class in Python (13 s for
100,000 clients), and building each partition costs another 1.5 ms a client.
"""
from __future__ import annotations

import numpy as np

from fedft.config import DataConfig
from fedft.data.clients import Clients
from fedft.errors import UsageError


def partition(labels: np.ndarray, cfg: DataConfig, seed: int, groups: np.ndarray | None = None,
              group_names: list[str] | None = None) -> Clients:
    """Indices into the training set, per client. Same labels, config and seed -> same split.
    `groups` (partition natural): each training row's client, an index into `group_names`."""
    labels = np.asarray(labels)
    if cfg.partition == "natural":
        return natural(labels, cfg, seed, groups, group_names or [])
    n = cfg.num_clients
    num_classes = int(labels.max()) + 1
    if n > len(labels):
        raise UsageError(f"data.num_clients = {n}: more clients than training examples ({len(labels)})")
    # IidPartitioner shards in order, so shuffle first; the others shuffle with their own seed.
    order = np.random.default_rng(seed).permutation(len(labels))
    try:
        if cfg.partition == "iid":
            clients = iid(order, n)
        elif cfg.partition == "dirichlet":
            clients = dirichlet(labels[order], n, cfg.alpha, min(cfg.min_partition_size, len(labels) // n), seed)
        else:
            if cfg.classes_per_client > num_classes:
                raise UsageError(f"data.classes_per_client = {cfg.classes_per_client}: the data has only "
                                 f"{num_classes} classes")
            clients = pathological(labels[order], n, cfg.classes_per_client, seed)
    except ValueError as e:
        hint = (f"; lower data.min_partition_size ({cfg.min_partition_size}) or raise data.alpha"
                if cfg.partition == "dirichlet" else "")
        raise UsageError(f"data.partition = {cfg.partition!r} with {n} clients cannot split "
                         f"{len(labels)} examples ({str(e).splitlines()[0]}){hint}") from None
    if cfg.partition != "iid":  # the partitioners index the shuffled rows
        clients = Clients(order[clients.flat], clients.offsets)
    return _capped(clients, labels, cfg.shots, seed)


def _capped(clients: Clients, labels: np.ndarray, shots: int, seed: int) -> Clients:
    """data.shots > 0: each client's rows cut to at most `shots` a class (seeded per client); names kept."""
    if shots <= 0:
        return clients
    return Clients.of((few_shot(idx, labels, shots, np.random.SeedSequence([seed, i])) for i, idx in enumerate(clients)),
                      clients.names)


def iid(order: np.ndarray, n: int) -> Clients:
    """IidPartitioner: contiguous shards of the (shuffled) rows, with np.array_split's sizes."""
    return Clients.by_size(order, _shares(len(order), n))


def _shares(rows: int, parts: int) -> np.ndarray:
    """np.array_split's sizes: rows over parts, the first rows % parts one larger."""
    q, r = divmod(rows, parts)
    return np.array([q + 1] * r + [q] * (parts - r), dtype=np.int64)


def dirichlet(targets: np.ndarray, n: int, alpha: float, min_size: int, seed: int) -> Clients:
    """DirichletPartitioner(self_balancing=True, shuffle=True, seed=seed) on rows with these labels: per class (in
    sorted order) a Dirichlet(alpha) share for every client, zero for a client already above the mean size, split
    points floor(cumsum(share) * class size); drawn again (at most 10 more times) until every client has min_size
    rows; then each client's rows shuffled in client order. Positions into `targets`."""
    rng = np.random.default_rng(seed)
    alphas = np.array([float(alpha)], dtype=float).repeat(n)
    classes = np.unique(targets)
    avg = len(targets) / n
    members = [np.nonzero(targets == k)[0] for k in classes]
    for attempt in range(11):
        sizes = np.zeros(n, dtype=np.int64)
        owners, rows = [], []
        for idx in members:
            share = rng.dirichlet(alphas)
            share[sizes > avg] = 0
            share = share / np.cumsum(share)[-1]  # sum() in order, as the partitioner adds them
            cuts = (np.cumsum(share) * len(idx)).astype(int)[:-1]
            bounds = np.concatenate([[0], np.clip(cuts, 0, len(idx)), [len(idx)]])
            got = np.diff(bounds)
            owners.append(np.repeat(np.arange(n), got))
            rows.append(idx)
            sizes += got
        if sizes.min() >= min_size:
            break
        if attempt == 10:
            raise ValueError("The max number of attempts (10) was reached. Please update the values of alpha and "
                             "try again.")
    return _grouped(np.concatenate(owners), np.concatenate(rows), n, rng)


def pathological(targets: np.ndarray, n: int, k: int, seed: int) -> Clients:
    """PathologicalPartitioner(num_classes_per_partition=k, class_assignment_mode="first-deterministic",
    shuffle=True, seed=seed): client i holds class i mod C and k - 1 more drawn at random; each class's rows go in
    np.array_split's shares to the clients holding it, in client order; then each client's rows shuffled."""
    rng = np.random.default_rng(seed)
    classes = np.unique(targets).tolist()
    if k > len(classes):
        raise ValueError(f"The specified `num_classes_per_partition`={k} is greater than the number of unique classes "
                         f"in the given dataset={len(classes)}.")
    held = np.zeros((n, len(classes)), dtype=bool)
    for pid in range(n):  # one draw at a time, as the partitioner draws them
        chosen = [pid % len(classes)]
        while len(chosen) < k:
            c = int(rng.integers(0, len(classes), size=1)[0])  # what rng.choice(classes, size=1) draws
            if c not in chosen:
                chosen.append(c)
        held[pid, chosen] = True
    owners, rows = [], []
    for j, label in enumerate(classes):
        holders = np.nonzero(held[:, j])[0]
        idx = np.nonzero(targets == label)[0]
        if len(holders) > len(idx):
            raise ValueError(f"Label: {label} is needed to be assigned to more partitions ({len(holders)}) than "
                             f"there are samples (corresponding to this label) in the dataset ({len(idx)}).")
        if not len(holders):
            continue
        owners.append(np.repeat(holders, _shares(len(idx), len(holders))))
        rows.append(idx)
    empty = np.empty(0, dtype=np.int64)
    return _grouped(np.concatenate(owners) if owners else empty, np.concatenate(rows) if rows else empty, n, rng)


def _grouped(owners: np.ndarray, rows: np.ndarray, n: int, rng: np.random.Generator) -> Clients:
    """Rows grouped by their client (in the order they were assigned), each client's then shuffled by `rng`, one
    client after another, as the partitioners shuffle their index lists."""
    by = np.argsort(owners, kind="stable")
    flat = rows[by].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(owners, minlength=n))])
    for c in range(n):
        rng.shuffle(flat[offsets[c]: offsets[c + 1]])
    return Clients(flat, offsets)


def natural(labels: np.ndarray, cfg: DataConfig, seed: int, groups: np.ndarray | None,
            group_names: list[str]) -> Clients:
    """One client per value of data.client_column (as flwr-datasets' NaturalIdPartitioner: each value's rows, in row
    order), in the order of the values (integers by value, else by text); data.num_clients set below the number found
    keeps that many, seeded (0, or the default left as it is, keeps them all)."""
    if groups is None:
        raise UsageError(f"data.partition = 'natural': data.name = {cfg.name!r} names no clients; use a file source "
                         f"(csv:, tsv:, jsonl:, parquet:, hf:) with a client column (data.client_column)")
    groups = np.asarray(groups, dtype=np.int64)
    chosen = np.arange(len(group_names))
    asked = 0 if cfg.num_clients == DataConfig().num_clients else cfg.num_clients  # the default: every client found
    if 0 < asked < len(chosen):
        chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), cfg.num_clients, replace=False))
    by_row = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups, minlength=len(group_names))
    if len(chosen) < len(group_names):  # the chosen values' rows, still grouped in value order
        by_row = by_row[np.isin(groups[by_row], chosen)]
    return _capped(Clients.by_size(by_row, sizes[chosen], [group_names[g] for g in chosen]), labels, cfg.shots, seed)


def hold_out(clients: Clients, fraction: float, seed: int) -> tuple[Clients, Clients]:
    """data.client_test_fraction: (what each client trains on, its own held-out rows): round(fraction * size) of each
    client's rows (seeded), at least one where the client has two or more, never all of them."""
    train, held = [], []
    for cid, idx in enumerate(clients):
        n = min(len(idx) - 1, max(1 if len(idx) > 1 else 0, int(round(fraction * len(idx)))))
        order = np.random.default_rng(np.random.SeedSequence([seed, cid, 17])).permutation(len(idx))
        held.append(np.sort(idx[order[:n]]))
        train.append(np.sort(idx[order[n:]]))
    names = getattr(clients, "names", None)
    return Clients.of(train, names), Clients.of(held, names)


def few_shot(idx: np.ndarray, labels: np.ndarray, shots: int, seed) -> np.ndarray:
    """At most `shots` examples of each class from one client's indices (seeded choice)."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(idx[labels[idx] == c])[:shots] for c in np.unique(labels[idx])]
    return np.sort(np.concatenate(keep)) if keep else idx


def label_counts(clients: Clients, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_clients, num_classes) count matrix."""
    clients = clients if isinstance(clients, Clients) else Clients.of(clients)
    cells = clients.owner() * num_classes + np.asarray(labels)[clients.flat]
    return np.bincount(cells, minlength=len(clients) * num_classes).reshape(len(clients), num_classes)
