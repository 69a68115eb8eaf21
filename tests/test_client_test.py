"""data.client_test_fraction: each client's own held-out rows, kept out of its training and scored client by client."""
import json

import numpy as np
import pytest

import fedft
from fedft.config import load_config
from fedft.data.partition import hold_out
from fedft.report import read_clients


def test_hold_out_takes_a_seeded_share_of_each_client_and_never_all():
    rng = np.random.default_rng(0)
    clients = [np.sort(rng.choice(1000, n, replace=False)) for n in (40, 9, 2, 1)]
    train, held = hold_out(clients, 0.25, seed=3)
    for c, t, h in zip(clients, train, held):
        assert not set(t) & set(h) and sorted([*t, *h]) == sorted(c)
        assert len(t) >= 1
    assert [len(h) for h in held] == [10, 2, 1, 0]  # round(0.25 n), at least one of two or more, never the last row
    again = hold_out(clients, 0.25, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(held, again[1]))
    other = hold_out(clients, 0.25, seed=4)
    assert not np.array_equal(held[0], other[1][0])


@pytest.mark.parametrize("mode", ["federated", "local"])
def test_client_rows_stay_out_of_training_and_are_scored_each_evaluation(tiny, tmp_path, mode):
    from fedft.api import prepare

    sets = tiny(**{"data.client_test_fraction": 0.25, "method.name": "bias", "fl.mode": mode})
    config = load_config(None, sets)
    whole = prepare(load_config(None, tiny(**{"method.name": "bias"})))
    exp = prepare(config)
    assert [len(c) + len(h) for c, h in zip(exp.clients, exp.client_tests)] == [len(c) for c in whole.clients]
    result = fedft.run(config, tmp_path / mode)
    data = json.loads((result.out_dir / "results.json").read_text())
    assert data["client_test"]["rows"] == [len(h) for h in exp.client_tests]
    assert read_clients(result.out_dir)["rows"] == [len(c) for c in exp.clients]
    scored = [r for r in data["rounds"] if r["accuracy"] is not None]
    assert scored and all(0 <= r["client_accuracy"] <= 1 and r["client_accuracy_std"] >= 0 for r in scored)
    assert data["final"]["client_accuracy"] == scored[-1]["client_accuracy"]


def test_client_accuracy_matches_a_hand_count(tiny):
    """The score of the global model on each client's rows, counted example by example."""
    import torch

    from fedft.api import prepare
    from fedft.fl.client_test import scores

    exp = prepare(load_config(None, tiny(**{"data.client_test_fraction": 0.3, "method.name": "bias"})))
    exp.model.eval()
    accs = []
    with torch.no_grad():
        for h in exp.client_tests:
            inputs, labels = exp.train.batch(h)
            accs.append(float((exp.model(**inputs).argmax(-1) == labels).float().mean()))
    got = scores(exp.task, exp.model, exp.train, exp.client_tests, "fp32")
    assert got["client_accuracy"] == pytest.approx(np.mean(accs))
    assert got["client_accuracy_std"] == pytest.approx(np.std(accs))
