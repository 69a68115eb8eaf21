"""Robust aggregation: coordinate-wise median, trimmed mean and (Multi-)Krum against hand computations, and the
strategies that use them."""
import pytest
import torch

from fedft.config import load_config
from fedft.errors import UsageError
from fedft.fl.aggregate import coordinate_median, krum_select, trimmed_mean
from fedft.fl.messages import Update
from fedft.fl.strategies import STRATEGIES


def states(*rows):
    return [{"w": torch.tensor(r, dtype=torch.float32)} for r in rows]


def test_median_by_hand():
    assert coordinate_median(states([1., 10.], [3., -2.], [2., 7.]))["w"].tolist() == [2., 7.]
    assert coordinate_median(states([1., 10.], [3., -2.], [2., 7.], [100., 0.]))["w"].tolist() == [2.5, 3.5]


def test_trimmed_mean_by_hand():
    s = states([1.], [2.], [3.], [4.], [100.])
    assert trimmed_mean(s, 0.2)["w"].tolist() == [3.0]  # drops 1 and 100
    assert trimmed_mean(s, 0.0)["w"].item() == pytest.approx(22.0)
    with pytest.raises(ValueError):
        trimmed_mean(states([1.], [2.]), 0.49 + 0.01)


def test_krum_picks_the_clustered_updates():
    s = states([0., 0.], [0.1, 0.], [0., 0.1], [0.1, 0.1], [50., -50.])
    assert 4 not in krum_select(s, byzantine=1, keep=3)
    assert krum_select(s, byzantine=1, keep=1) in ([0], [1], [2], [3])
    # hand: with n=5, f=1 each score sums the 2 nearest squared distances
    d = lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b))  # noqa: E731
    pts = [[0., 0.], [0.1, 0.], [0., 0.1], [0.1, 0.1], [50., -50.]]
    scores = [sum(sorted(d(p, q) for j, q in enumerate(pts) if j != i)[:2]) for i, p in enumerate(pts)]
    assert krum_select(s, 1, 1) == [min(range(5), key=lambda i: (scores[i], i))]


def test_strategies_resist_one_huge_update():
    cfg = load_config(None, ["fl.strategy=\"median\""]).fl
    current = {"w": torch.zeros(3)}
    honest = [Update(0, {"w": torch.full((3,), v)}, 10) for v in (1.0, 1.1, 0.9, 1.05)]
    evil = Update(0, {"w": torch.full((3,), 1e6)}, 10)
    for name in ("median", "trimmed_mean", "krum"):
        out = STRATEGIES.get(name, "fl.strategy")(cfg).aggregate(1, current, [*honest, evil])["w"]
        assert out.abs().max() < 1.2, name
    fedavg = STRATEGIES.get("fedavg", "fl.strategy")(cfg).aggregate(1, current, [*honest, evil])["w"]
    assert fedavg.abs().max() > 1e5


@pytest.mark.parametrize("sets, words", [
    (["fl.trim_beta=0.5"], "trim_beta"),
    (["fl.krum_keep=0"], "krum_keep"),
    (["fl.strategy=\"krum\"", "fl.clients_per_round=4", "fl.krum_byzantine=1"], "clients_per_round > 2"),
    (["fl.strategy=\"krum\"", "fl.krum_keep=10", "fl.krum_byzantine=1"], "at most"),
    (["fl.max_norm_ratio=3", "fl.clients_per_round=2"], "clients_per_round >= 3"),
    (["fl.strategy=\"krum\"", "method.name=\"layers\""], "different layers"),
])
def test_bad_robust_settings(sets, words):
    with pytest.raises(UsageError, match=words):
        load_config(None, sets)


# ---------------------------------------------------------------- update validation and attacks

from fedft.fl.validate import attack, malicious_clients, problem, update_norm  # noqa: E402


def test_problem_names_each_bad_update():
    start = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    good = {"a": torch.ones(2, 3), "b": torch.ones(4)}
    assert problem(good, start, 0) is None
    assert problem({"a": torch.ones(2, 3)}, start, 0) is None  # a subset (method layers) is fine
    assert "NaN" in problem({**good, "b": torch.tensor([0., float("nan"), 0., 0.])}, start, 0)
    assert "Inf" in problem({**good, "b": torch.tensor([0., float("inf"), 0., 0.])}, start, 0)
    assert "shape (3, 2)" in problem({**good, "a": torch.ones(3, 2)}, start, 0)
    assert "unknown parameter 'c'" in problem({**good, "c": torch.ones(1)}, start, 0)
    assert "floating-point" in problem({**good, "b": torch.ones(4, dtype=torch.long)}, start, 0)
    assert update_norm(good, start) == pytest.approx(10 ** 0.5)
    assert "max_update_norm" in problem(good, start, 3.0)
    assert problem(good, start, 3.2) is None


def test_attacks():
    start, honest = {"w": torch.zeros(4)}, {"w": torch.tensor([1., -1., 2., 0.])}
    assert attack("sign_flip", 2.0, start, honest, 0)["w"].tolist() == [-2., 2., -4., 0.]
    assert attack("scale", 3.0, start, honest, 0)["w"].tolist() == [3., -3., 6., 0.]
    rnd = attack("random", 2.0, start, honest, 0)
    assert update_norm(rnd, start) == pytest.approx(2.0 * update_norm(honest, start), rel=1e-5)
    assert torch.equal(rnd["w"], attack("random", 2.0, start, honest, 0)["w"])  # seeded
    chosen = malicious_clients(10, 0.3, 0)
    assert len(chosen) == 3 and chosen == malicious_clients(10, 0.3, 0) and malicious_clients(10, 0.0, 0) == set()


def test_bad_updates_are_rejected_and_the_run_completes(tmp_path, tiny, monkeypatch):
    """One client sends NaN, one a wrong shape, one a huge update (scaled): each is rejected and recorded."""
    import fedft
    from fedft.fl import runners

    real = runners.OneByOne.train

    def corrupt(self, rnd, instructions):
        updates = real(self, rnd, instructions)
        name = next(iter(updates[0].state))
        updates[0].state[name] = torch.full_like(updates[0].state[name], float("nan"))
        updates[1].state[name] = updates[1].state[name].reshape(-1)[:-1]
        return updates

    monkeypatch.setattr(runners.OneByOne, "train", corrupt)
    cfg = load_config(None, tiny(**{"method.name": "bias", "fl.clients_per_round": 4, "fl.malicious_fraction": 0.25,
                                    "fl.attack": "scale", "fl.attack_scale": 1000.0, "fl.max_update_norm": 5.0}))
    result = fedft.run(cfg, tmp_path / "r")
    assert result.final["accuracy"] is not None
    for row in result.rounds:
        whys = [r["why"] for r in row["rejected"]]
        assert any("NaN" in w for w in whys) and any("shape" in w for w in whys)
        assert row["returned"] == 4 - len(whys)
    assert any("max_update_norm" in r["why"] for row in result.rounds for r in row["rejected"])


def test_norm_outliers_by_hand():
    from fedft.fl.validate import norm_outliers
    flags = norm_outliers([1.0, 1.2, 0.9, 30.0, 1.1], 10.0)  # median 1.1: only 30 > 11
    assert [f is not None for f in flags] == [False, False, False, True, False]
    assert "max_norm_ratio" in flags[3]
    assert norm_outliers([1.0, 30.0], 10.0) == [None, None]  # no majority to compare against
    assert norm_outliers([1.0, 1.0, 30.0], 0.0) == [None, None, None]  # off


def test_update_far_out_of_line_is_rejected(tmp_path, tiny):
    """With no absolute limit, a 1000x-scaled update is rejected as out of line with the round's others; the honest
    updates all pass."""
    import fedft
    from fedft.fl.validate import malicious_clients

    cfg = load_config(None, tiny(**{"method.name": "bias", "data.num_clients": 6, "fl.clients_per_round": 6,
                                    "fl.malicious_fraction": 1 / 6, "fl.attack": "scale", "fl.attack_scale": 1000.0,
                                    "fl.max_norm_ratio": 10.0}))
    result = fedft.run(cfg, tmp_path / "r")
    evil = malicious_clients(6, 1 / 6, cfg.fl.seed)
    for row in result.rounds:
        assert {r["client"] for r in row["rejected"]} == evil
        assert all("max_norm_ratio" in r["why"] for r in row["rejected"]) and row["returned"] == 5
    with pytest.raises(UsageError, match="max_norm_ratio"):
        load_config(None, ["fl.max_norm_ratio=0.5"])
