"""Split training examples over clients with flwr-datasets' partitioners, then cap shots per class."""
from __future__ import annotations

import warnings

import numpy as np

from fedft.config import DataConfig
from fedft.errors import UsageError


def partition(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Indices into the training set, one array per client. Same labels, config and seed -> same split."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    datasets.disable_progress_bars()
    n = cfg.num_clients
    num_classes = int(labels.max()) + 1
    if n > len(labels):
        raise UsageError(f"data.num_clients = {n}: more clients than training examples ({len(labels)})")
    # IidPartitioner shards in order, so shuffle first; the others shuffle with their own seed.
    order = np.random.default_rng(seed).permutation(len(labels))
    ds = datasets.Dataset.from_dict({"label": labels[order].tolist(), "idx": order.tolist()})
    if cfg.partition == "iid":
        part = IidPartitioner(num_partitions=n)
    elif cfg.partition == "dirichlet":
        part = DirichletPartitioner(num_partitions=n, partition_by="label", alpha=cfg.alpha,
                                    min_partition_size=min(cfg.min_partition_size, len(labels) // n),
                                    self_balancing=True, seed=seed)
    else:
        if cfg.classes_per_client > num_classes:
            raise UsageError(f"data.classes_per_client = {cfg.classes_per_client}: the data has only "
                             f"{num_classes} classes")
        # first-deterministic: client i always holds class i mod C, so every class is used when n >= C
        part = PathologicalPartitioner(num_partitions=n, partition_by="label",
                                       num_classes_per_partition=cfg.classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    part.dataset = ds
    try:
        with warnings.catch_warnings():  # flwr-datasets warns on each Dirichlet resample; the result is checked
            warnings.simplefilter("ignore", UserWarning)
            clients = [np.array(part.load_partition(i)["idx"], dtype=np.int64) for i in range(n)]
    except ValueError as e:
        hint = (f"; lower data.min_partition_size ({cfg.min_partition_size}) or raise data.alpha"
                if cfg.partition == "dirichlet" else "")
        raise UsageError(f"data.partition = {cfg.partition!r} with {n} clients cannot split "
                         f"{len(labels)} examples ({str(e).splitlines()[0]}){hint}") from None
    if cfg.shots > 0:
        clients = [few_shot(idx, labels, cfg.shots, np.random.SeedSequence([seed, i])) for i, idx in enumerate(clients)]
    return clients


def few_shot(idx: np.ndarray, labels: np.ndarray, shots: int, seed) -> np.ndarray:
    """At most `shots` examples of each class from one client's indices (seeded choice)."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(idx[labels[idx] == c])[:shots] for c in np.unique(labels[idx])]
    return np.sort(np.concatenate(keep)) if keep else idx


def label_counts(clients: list[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_clients, num_classes) count matrix."""
    return np.stack([np.bincount(labels[idx], minlength=num_classes) for idx in clients])
