"""Selective layer fine-tuning: budgets, the server's mask choice, per-layer partial aggregation, bytes, heat map."""
import itertools
import json

import numpy as np
import pytest
import torch

from fedft.api import prepare, run
from fedft.cli import main
from fedft.config import load_config
from fedft.fl import comm, selection
from fedft.fl.aggregate import partial_average
from fedft.fl.messages import Update
from fedft.fl.strategies import STRATEGIES
from fedft.methods.layers import layer_importance
from fedft.report import selection_counts


def selector(exp):
    """The run's layer selector, as the layers method's hook builds it."""
    from fedft.methods.layers import LayerSelector

    return LayerSelector(exp.config.method, exp.model, len(exp.clients), exp.config.fl.seed)


def random_problem(n=8, L=6, seed=0):
    rng = np.random.default_rng(seed)
    return selection.normalise(rng.random((n, L)) ** 3), rng.integers(1, 5, n)


@pytest.mark.parametrize("lam", [0.0, 0.02, 0.3, 100.0])
@pytest.mark.parametrize("solver", ["exact", "local_search"])
def test_every_client_trains_at_least_one_layer_and_at_most_its_budget(lam, solver):
    g, b = random_problem()
    masks = getattr(selection, solver)(g, b, lam, None, np.ones(len(g), dtype=bool))
    assert masks.dtype == bool and (masks.sum(1) <= b).all() and (masks.sum(1) >= 1).all()
    if lam == 0:  # nothing to gain by leaving a layer out
        assert (masks.sum(1) == b).all()


def test_a_client_trains_fewer_layers_than_its_budget_where_that_is_better():
    """At most, not exactly: a client whose last layer would break the others' agreement leaves it out."""
    g = selection.normalise(np.array([[0.5, 0.5, 0.0, 0.0]] * 4 + [[0.45, 0.45, 0.1, 0.0]]))
    b = np.array([2, 2, 2, 2, 3])
    for solver in ("exact", "local_search"):
        masks = getattr(selection, solver)(g, b, 1.0, None, np.ones(5, dtype=bool))
        assert masks[4].sum() == 2 and not masks[4, 2], solver  # the third layer alone costs more than it gives


def test_lambda_is_on_a_scale_that_does_not_grow_with_the_clients():
    """The penalty is divided by n - 1: the same importances at 10 and at 100 clients need about the same lambda
    to agree, and that lambda lies between 0.01 and 1."""
    rng = np.random.default_rng(3)
    base = selection.normalise(rng.random((5, 6)) ** 2)
    found = [selection.consensus_lambda(np.repeat(base, n // 5, axis=0), np.full(n, 2)) for n in (10, 100)]
    assert all(0.01 <= x <= 1.0 for x in found), found
    assert found[1] == pytest.approx(found[0], rel=0.25)
    masks = selection.choose(np.repeat(base, 2, axis=0), np.full(10, 2), found[0])
    assert selection.consensus(masks)
    assert not selection.consensus(selection.choose(np.repeat(base, 2, axis=0), np.full(10, 2), found[0] / 1.5))


def test_without_balance_each_client_takes_its_own_top_layers():
    g, b = random_problem()
    masks = selection.choose(g, b, 0.0)
    for row, budget, m in zip(g, b, masks):
        assert set(np.flatnonzero(m)) == set(np.argsort(-row)[:budget])


def test_with_a_huge_balance_all_clients_pick_the_same_layers():
    g, _ = random_problem()
    same = selection.choose(g, np.full(len(g), 2), 1e6)
    assert (same == same[0]).all()
    nested = selection.choose(g, np.array([1, 2, 3, 4, 1, 2, 3, 4]), 1e6)  # unequal budgets: each set inside the next
    sets = [set(np.flatnonzero(m)) for m in nested]
    assert all(a <= c or c <= a for a in sets for c in sets)


def test_exact_solver_is_optimal_and_local_search_is_close():
    g, b = random_problem(n=3, L=4, seed=1)
    for lam in (0.05, 0.2):
        best = max(
            selection.objective(np.array(m), g, lam)
            for m in itertools.product(*[[np.isin(np.arange(4), c) for k in range(1, bi + 1)
                                          for c in itertools.combinations(range(4), k)] for bi in b]))
        exact = selection.exact(g, b, lam, None, np.ones(3, dtype=bool))
        local = selection.local_search(g, b, lam, None, np.ones(3, dtype=bool))
        assert selection.objective(exact, g, lam) == pytest.approx(best)
        assert selection.objective(local, g, lam) <= best + 1e-12


def test_local_search_scales_to_1000_clients_by_48_layers():
    g, _ = random_problem(n=1000, L=48, seed=2)
    b = np.random.default_rng(2).integers(1, 5, 1000)
    masks = selection.choose(g, b, 0.001)  # above the exact solver's size: local search
    assert (masks.sum(1) <= b).all() and (masks.sum(1) >= 1).all()
    assert selection.objective(masks, g, 0.001) >= selection.objective(selection.top_b(g, b), g, 0.001)


def test_fixed_clients_keep_their_masks():
    g, b = random_problem()
    fixed = np.zeros(g.shape, dtype=bool)
    fixed[0, :b[0]] = True
    masks = selection.choose(g, b, 0.1, fixed)
    assert (masks[0] == fixed[0]).all() and (masks.sum(1) <= b).all()


def test_partial_aggregation_averages_only_the_clients_that_trained_a_layer():
    current = {"l0": torch.tensor([1.0, 1.0]), "l1": torch.tensor([5.0]), "head": torch.tensor([0.0])}
    a = {"l0": torch.tensor([3.0, 0.0]), "head": torch.tensor([1.0])}  # 10 examples, trained layer 0
    b = {"l0": torch.tensor([0.0, 6.0]), "head": torch.tensor([4.0])}  # 20 examples, trained layer 0
    c = {"head": torch.tensor([7.0])}  # 30 examples, trained no layer
    out = partial_average(current, [a, b, c], [10, 20, 30])
    assert torch.allclose(out["l0"], torch.tensor([(3 * 10 + 0 * 20) / 30, (0 * 10 + 6 * 20) / 30]))
    assert torch.allclose(out["head"], torch.tensor([(1 * 10 + 4 * 20 + 7 * 30) / 60]))
    assert out["l1"] is current["l1"]  # nobody trained it: untouched, bit for bit
    strategy = STRATEGIES.get("fedavg", "fl.strategy")(load_config().fl)
    agg = strategy.aggregate(1, current, [Update(0, a, 10), Update(0, b, 20), Update(0, c, 30)])
    assert torch.equal(agg["l1"], current["l1"]) and torch.allclose(agg["l0"], out["l0"])


@pytest.mark.parametrize("select", ["top", "gradient"])
def test_clients_send_exactly_their_layers_and_the_rest_stays_put(tiny, tmp_path, select):
    config = load_config(None, tiny(**{"method.name": "layers", "method.budget": 1, "method.select": select,
                                       "fl.rounds": 1}))
    start = {k: v.detach().clone() for k, v in prepare(config).params.items()}
    result = run(config, tmp_path / "run")
    row = result.rounds[0]
    selected = {int(c): layers for c, layers in row["selection"].items()}
    assert sorted(selected) == row["clients"] and all(len(v) == 1 for v in selected.values())
    if select == "top":
        assert all(v == [1] for v in selected.values())
    exp = prepare(config)
    sel = selector(exp)
    layer_of = sel.layer_of
    expected = 0
    for layers in selected.values():
        names = [n for n, l in layer_of.items() if l is None or l in layers]
        expected += len(comm.encode({n: start[n] for n in names}, "float32"))
        expected += 4 * sel.num_layers if select == "gradient" else 0  # the importance report
    assert row["bytes_up"] == expected
    from safetensors.torch import load_file

    final = load_file(str(tmp_path / "run" / "trainable.safetensors"))
    trained = {l for v in selected.values() for l in v}
    for name, layer in layer_of.items():
        if layer is not None and layer not in trained:
            assert torch.equal(final[name], start[name]), name  # no client trained it: bit-identical
    assert any(not torch.equal(final[n], start[n]) for n, l in layer_of.items() if l in trained)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    counts = selection_counts(record["rounds"], record["layers"]["num_layers"])
    assert counts.sum() == len(selected) and (tmp_path / "run" / "selection.png").exists()


def test_masks_are_kept_until_reselection(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "layers", "method.select": "random",
                                            "method.budget": 1, "method.reselect_every": 3})))
    sel = selector(exp)
    first, _ = sel.choose(1, [0, 1], lambda c: None)
    assert sel.choose(3, [0, 1], lambda c: None)[0] == first
    assert sel.masks[0][0] == 1
    sel.choose(4, [0], lambda c: None)
    assert sel.masks[0][0] == 4 and sel.masks[1][0] == 1


def test_heterogeneous_budgets_are_drawn_once_within_bounds(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "layers", "method.budget_min": 1, "method.budget_max": 2,
                                            "data.num_clients": 4})))
    b = selector(exp).budget
    assert len(b) == 4 and b.min() >= 1 and b.max() <= 2
    again = prepare(load_config(None, tiny(**{"method.name": "layers", "method.budget_min": 1,
                                              "method.budget_max": 2, "data.num_clients": 4})))
    assert (selector(again).budget == b).all()


def test_importance_is_the_summed_squared_gradient_norm_per_layer(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "layers"})))
    sel, idx = selector(exp), exp.clients[0][:16]
    gn = layer_importance(exp.model, exp.params, sel.layer_of, sel.num_layers, exp.train, idx, 16, "gn")
    exp.model.eval()
    inputs, labels = exp.train.batch(idx)
    torch.nn.functional.cross_entropy(exp.model(**inputs), labels).backward()
    by_hand = np.zeros(sel.num_layers)
    for n, layer in sel.layer_of.items():
        if layer is not None:
            by_hand[layer] += float(exp.params[n].grad.double().pow(2).sum())
    assert np.allclose(gn, by_hand, rtol=1e-5) and (gn > 0).all()
    rgn = layer_importance(exp.model, exp.params, sel.layer_of, sel.num_layers, exp.train, idx, 16, "rgn")
    norms = np.zeros(sel.num_layers)
    for n, layer in sel.layer_of.items():
        if layer is not None:
            norms[layer] += float(exp.params[n].detach().double().pow(2).sum())
    assert np.allclose(rgn, by_hand / norms, rtol=1e-5)


@pytest.mark.parametrize("setting, message", [
    ("method.budget=3", "method.budget = 3: must be between 1 and the model's 2 layers"),
    ("method.budget=0", "method.budget = 0: must be >= 1"),
    ("method.select=middle", "method.select = 'middle': choose one of"),
    ("method.balance=-1", "method.balance = -1.0: must be >= 0"),
    ("method.budget_max=5", "method.budget_max = 5: must be between 1 and the model's 2 layers"),
])
def test_bad_layer_settings_exit_2_with_one_line(tiny, tmp_path, capsys, setting, message):
    args = ["run", "--out", str(tmp_path / "r"), "--quiet"]
    for item in tiny(**{"method.name": "layers"}) + [setting]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
