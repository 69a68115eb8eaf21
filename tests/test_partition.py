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
