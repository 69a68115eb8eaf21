import dataclasses

import numpy as np
import pytest

from fedft.config import DataConfig
from fedft.data.partition import label_counts, partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 balanced classes


def split(**kw):
    return partition(LABELS, DataConfig(**kw), seed=kw.pop("seed", 0) if "seed" in kw else 0)


def check_disjoint_cover(clients, n=len(LABELS), full=True):
    allidx = np.concatenate(clients)
    assert len(allidx) == len(np.unique(allidx)), "a training example is given to two clients"
    if full:
        assert sorted(allidx.tolist()) == list(range(n))


def test_iid_sizes_equal_and_labels_balanced():
    clients = split(num_clients=10, partition="iid")
    check_disjoint_cover(clients)
    assert {len(c) for c in clients} == {100}
    counts = label_counts(clients, LABELS, 10)
    assert counts.max() <= 25  # 10 per class expected; a skewed split would give far more


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def skew(alpha):
        counts = label_counts(split(num_clients=10, partition="dirichlet", alpha=alpha), LABELS, 10)
        return float(np.mean(counts.max(1) / counts.sum(1)))  # mean share of a client's top label

    iid = label_counts(split(num_clients=10, partition="iid"), LABELS, 10)
    check_disjoint_cover(split(num_clients=10, partition="dirichlet", alpha=0.1))
    assert skew(0.1) > skew(1.0) > float(np.mean(iid.max(1) / iid.sum(1)))
    assert skew(0.1) > 0.4


def test_pathological_gives_k_labels_per_client():
    clients = split(num_clients=10, partition="pathological", classes_per_client=2)
    check_disjoint_cover(clients, full=False)
    counts = label_counts(clients, LABELS, 10)
    assert ((counts > 0).sum(1) == 2).all()
    assert (counts.sum(0) > 0).all()  # every class is used


def test_shots_cap_examples_per_class():
    clients = split(num_clients=5, partition="iid", shots=3)
    counts = label_counts(clients, LABELS, 10)
    assert counts.max() == 3 and counts.sum() == 5 * 10 * 3


def test_seeded_and_reproducible():
    cfg = DataConfig(num_clients=8, partition="dirichlet", alpha=0.5)
    a, b = partition(LABELS, cfg, seed=1), partition(LABELS, cfg, seed=1)
    c = partition(LABELS, cfg, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_benchmark_scale_dirichlet_split():
    from fedft.errors import UsageError

    labels = np.repeat(np.arange(10), 1000)  # Fashion-MNIST's 10 x 1,000 at 100 clients, alpha 0.1
    clients = partition(labels, DataConfig(num_clients=100, partition="dirichlet", alpha=0.1, min_partition_size=5),
                        seed=0)
    check_disjoint_cover(clients, n=len(labels))
    assert min(len(c) for c in clients) >= 5
    with pytest.raises(UsageError, match="lower data.min_partition_size"):
        partition(labels, DataConfig(num_clients=100, partition="dirichlet", alpha=0.1, min_partition_size=90),
                  seed=0)


def test_too_many_clients_is_a_usage_error():
    from fedft.errors import UsageError

    with pytest.raises(UsageError, match="more clients than training examples"):
        partition(LABELS[:5], DataConfig(num_clients=10, partition="iid"), seed=0)
    with pytest.raises(UsageError, match="only 10 classes"):
        split(num_clients=4, partition="pathological", classes_per_client=11)


def _flwr_reference(labels, cfg, seed):
    """The split as flwr-datasets' partitioners give it, one load_partition per client (what fedft did before)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    datasets.disable_progress_bars()
    n = cfg.num_clients
    order = np.random.default_rng(seed).permutation(len(labels))
    ds = datasets.Dataset.from_dict({"label": labels[order].tolist(), "idx": order.tolist()})
    if cfg.partition == "iid":
        part = IidPartitioner(num_partitions=n)
    elif cfg.partition == "dirichlet":
        part = DirichletPartitioner(num_partitions=n, partition_by="label", alpha=cfg.alpha,
                                    min_partition_size=min(cfg.min_partition_size, len(labels) // n),
                                    self_balancing=True, seed=seed)
    else:
        part = PathologicalPartitioner(num_partitions=n, partition_by="label",
                                       num_classes_per_partition=cfg.classes_per_client,
                                       class_assignment_mode="first-deterministic", seed=seed)
    part.dataset = ds
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [np.array(part.load_partition(i)["idx"], dtype=np.int64) for i in range(n)]


def test_the_numpy_split_equals_flwr_datasets_partitioners():
    """Same clients, same indices, same order as flwr-datasets' own partitioners, on random label sets (skewed
    classes, a class missing, more clients than classes), for IID, Dirichlet (with resampling to a minimum size) and
    pathological."""
    rng = np.random.default_rng(0)
    cases = 0
    for trial in range(8):
        num_classes = int(rng.integers(2, 8))
        labels = rng.choice(num_classes, size=int(rng.integers(60, 400)), p=rng.dirichlet(np.ones(num_classes)))
        for kind, extra in (("iid", {}), ("dirichlet", {"alpha": float(rng.choice([0.1, 0.5, 2.0])),
                                                         "min_partition_size": int(rng.integers(0, 4))}),
                            ("pathological", {"classes_per_client": int(rng.integers(1, 3))})):
            cfg = DataConfig(num_clients=int(rng.integers(2, 15)), partition=kind, **extra)
            seed = int(rng.integers(0, 100))
            try:
                want = _flwr_reference(labels, cfg, seed)
            except ValueError:  # the partitioner cannot split it: fedft says so in one line
                from fedft.errors import UsageError
                with pytest.raises(UsageError):
                    partition(labels, cfg, seed)
                continue
            got = partition(labels, cfg, seed)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            cases += 1
    assert cases >= 18


def test_few_shot_and_natural_clients_equal_the_per_client_partition():
    """The gathered clients equal what one partition per client gave before: flwr-datasets' partitioner, then each
    client cut to data.shots a class (fedft's few_shot, seeded by client); and natural clients equal
    NaturalIdPartitioner's (its sorted ids, each one's rows in row order), for integer and text client ids."""
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner

    from fedft.data.partition import few_shot
    from fedft.data.sources.table import _client_ids

    datasets.disable_progress_bars()
    rng = np.random.default_rng(3)
    for trial in range(4):
        labels = rng.integers(0, 4, int(rng.integers(80, 300)))
        for kind in ("iid", "dirichlet", "pathological"):
            cfg = DataConfig(num_clients=int(rng.integers(2, 8)), partition=kind, alpha=0.5, classes_per_client=2)
            seed, shots = int(rng.integers(0, 100)), int(rng.integers(1, 4))
            want = [few_shot(w, labels, shots, np.random.SeedSequence([seed, i]))
                    for i, w in enumerate(_flwr_reference(labels, cfg, seed))]
            got = partition(labels, dataclasses.replace(cfg, shots=shots), seed)
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
        users = rng.integers(0, 9, len(labels))
        for ids in (users.tolist(), [f"site-{chr(97 + u)}" for u in users]):
            groups, names = _client_ids(ids, list(range(len(ids))), "k", "user")
            natural = NaturalIdPartitioner(partition_by="user")
            natural.dataset = datasets.Dataset.from_dict({"user": ids, "idx": list(range(len(ids)))})
            want = [np.array(natural.load_partition(i)["idx"]) for i in range(natural.num_partitions)]
            got = partition(labels, DataConfig(partition="natural", client_column="user"), 0, groups, names)
            assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
            assert [str(v) for v in natural.partition_id_to_natural_id.values()] == got.names


def test_a_million_clients_are_two_arrays():
    from fedft.data.clients import Clients

    labels = np.random.default_rng(1).integers(0, 5, 2_000_000)
    clients = partition(labels, DataConfig(num_clients=1_000_000, partition="iid"), seed=0)
    assert isinstance(clients, Clients) and len(clients) == 1_000_000
    assert set(clients.sizes.tolist()) == {2}
    assert len(np.unique(clients.flat)) == 2_000_000
    np.testing.assert_array_equal(clients[999_999], clients.flat[-2:])
    assert clients.summary() == {"count": 1_000_000, "rows": 2_000_000, "min": 2, "median": 2.0, "max": 2,
                                 "empty": 0}


def test_label_shares_made_in_chunks_score_as_the_whole_matrix(monkeypatch):
    """The personal score from label shares built a few clients at a time equals the one from the full matrix."""
    from fedft.tasks.classify import LabelShares, personal_accuracy

    clients = split(num_clients=10, partition="dirichlet", alpha=0.3)
    dense = LabelShares(clients, LABELS, 10)[0:10]
    np.testing.assert_allclose(dense.sum(1), 1.0)
    np.testing.assert_array_equal(dense, label_counts(clients, LABELS, 10) / clients.sizes[:, None])
    right, seen = np.arange(10) * 3, np.full(10, 40)
    seen[4] = 0  # a class the test set lacks
    monkeypatch.setattr(LabelShares, "CHUNK", 3)
    chunked = personal_accuracy(right, seen, LabelShares(clients, LABELS, 10))
    assert abs(chunked - personal_accuracy(right, seen, dense)) < 1e-12 and 0 < chunked < 1
