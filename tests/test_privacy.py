"""Client dropout, stragglers, and client-level differential privacy (DP-FedAvg)."""
import json
import math

import numpy as np
import pytest
import torch

from fedft.api import prepare, run
from fedft.config import DPConfig, load_config
from fedft.fl.availability import client_fates
from fedft.fl.privacy import ClientDP, clip_update, update_norm
from fedft.report import read_clients


def rounds_of(tmp_path, tiny, name, **overrides):
    res = run(load_config(None, tiny(**overrides)), tmp_path / name)
    return res, json.loads((tmp_path / name / "results.json").read_text())


def test_full_dropout_keeps_the_model_and_says_so(tiny, tmp_path):
    from safetensors.torch import load_file

    res, record = rounds_of(tmp_path, tiny, "drop", **{"method.name": "bias", "fl.dropout": 1.0})
    for r in record["rounds"]:
        assert (r["sampled"], r["returned"], r["dropped"], r["aggregated"]) == (2, 0, 2, False)
        assert r["bytes_up"] == 0 and r["bytes_down"] > 0 and r["train_loss"] is None
    exp = prepare(load_config(None, tiny(**{"method.name": "bias"})))  # the same seeded start
    saved = load_file(str(tmp_path / "drop" / "trainable.safetensors"))
    for k, p in exp.params.items():
        assert torch.equal(saved[k], p.detach()), k


def test_dropout_and_stragglers_are_seeded_and_counted(tiny, tmp_path):
    over = {"method.name": "head", "fl.rounds": 4, "data.num_clients": 4, "fl.clients_per_round": 4,
            "fl.dropout": 0.5, "fl.stragglers": 0.5, "fl.straggler_slowdown": 10.0, "fl.deadline": 5.0}
    _, a = rounds_of(tmp_path, tiny, "a", **over)
    _, b = rounds_of(tmp_path, tiny, "b", **over)
    for ra, rb in zip(a["rounds"], b["rounds"]):
        assert (ra["returned"], ra["dropped"], ra["late"]) == (rb["returned"], rb["dropped"], rb["late"])
        assert ra["returned"] + ra["dropped"] + ra["late"] == ra["sampled"] == 4
    assert sum(r["dropped"] for r in a["rounds"]) > 0 and sum(r["late"] for r in a["rounds"]) > 0


def test_deadline_drops_exactly_the_slow_clients():
    fl = load_config(None, ["fl.stragglers=1.0", "fl.straggler_slowdown=3.0", "fl.deadline=6.0",
                            "fl.batch_size=10"]).fl
    sizes = [10, 20, 30]  # 1, 2, 3 steps -> 3, 6, 9 units as stragglers
    fates = client_fates(fl, 1, [0, 1, 2], sizes)
    assert fates.returned == [0, 1] and fates.late == [2] and fates.failed == []


def test_min_clients_skips_aggregation(tiny, tmp_path):
    _, record = rounds_of(tmp_path, tiny, "min", **{"method.name": "head", "fl.dropout": 0.5,
                                                     "fl.min_clients": 2, "fl.rounds": 4})
    for r in record["rounds"]:
        assert r["aggregated"] == (r["returned"] >= 2)
    assert not all(r["aggregated"] for r in record["rounds"])


def zeros_like_state(shape=(100, 100)):
    return {"w": torch.zeros(shape), "b": torch.zeros(shape[0])}


def test_dp_noise_has_the_stated_std():
    current = zeros_like_state()
    dp = ClientDP(DPConfig(mode="client", clip=0.5), clients_per_round=4, sample_rate=0.1, noise_multiplier=2.0,
                  seed=0)
    states = [zeros_like_state() for _ in range(4)]  # no update at all: the output is the noise alone
    out, info = dp.private_mean(current, states)
    noise = torch.cat([out["w"].flatten(), out["b"]])
    expected = 2.0 * 0.5 / 4
    assert info["noise_std"] == pytest.approx(expected)
    # 10,100 draws: the sample std is within 3% of the truth with overwhelming probability
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())


def test_clipping_bounds_every_update():
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 1.0, 100.0):
        delta = {"a": torch.randn(30, 7, generator=gen) * scale, "b": torch.randn(5, generator=gen) * scale}
        clipped, norm = clip_update(delta, 1.5)
        assert update_norm(clipped) <= 1.5 + 1e-6
        assert norm == pytest.approx(update_norm(delta))
        if norm <= 1.5:
            assert all(torch.equal(clipped[k], delta[k]) for k in delta)
        else:
            assert update_norm(clipped) == pytest.approx(1.5, rel=1e-6)


def test_dp_average_clips_each_client_then_averages():
    current = {"w": torch.zeros(3)}
    states = [{"w": torch.tensor([3.0, 4.0, 0.0])}, {"w": torch.tensor([0.0, 0.3, 0.4])}]  # norms 5 and 0.5
    dp = ClientDP(DPConfig(mode="client", clip=1.0), 2, 0.1, noise_multiplier=0.0, seed=0)
    out, info = dp.private_mean(current, states)
    torch.testing.assert_close(out["w"], torch.tensor([0.3, 0.55, 0.2]))  # ([.6,.8,0] + [0,.3,.4]) / 2
    assert info["clipped"] == 1


def test_reported_epsilon_matches_opacus_accountant(tiny, tmp_path):
    from opacus.accountants import RDPAccountant

    _, record = rounds_of(tmp_path, tiny, "dp", **{"method.name": "bias", "dp.mode": "client", "dp.clip": 0.1,
                                                    "dp.noise_multiplier": 1.3, "fl.rounds": 3})
    acc = RDPAccountant()
    q = 2 / 4  # clients_per_round / num_clients
    for r in record["rounds"]:
        acc.step(noise_multiplier=1.3, sample_rate=q)
        assert r["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
        assert r["dp"]["noise_std"] == pytest.approx(1.3 * 0.1 / 2)
    assert record["final"]["epsilon"] == record["rounds"][-1]["epsilon"]
    assert record["dp"]["planned_epsilon"] == pytest.approx(record["final"]["epsilon"])


def test_target_epsilon_calibrates_the_noise(tiny, tmp_path):
    _, record = rounds_of(tmp_path, tiny, "eps", **{"method.name": "bias", "dp.mode": "client",
                                                     "dp.target_epsilon": 4.0, "fl.rounds": 3})
    assert 3.9 <= record["final"]["epsilon"] <= 4.0
    z = record["dp"]["noise_multiplier"]
    assert z > 0 and record["rounds"][0]["dp"]["noise_std"] == pytest.approx(z * 1.0 / 2)


def test_adaptive_clip_moves_toward_the_quantile():
    cfg = DPConfig(mode="client", clip=1.0, adaptive_clip=True, target_quantile=0.5, clip_lr=0.2, count_noise=1e-9)
    current = {"w": torch.zeros(2)}
    big = [{"w": torch.tensor([10.0, 0.0])} for _ in range(4)]
    dp = ClientDP(cfg, 4, 0.1, noise_multiplier=0.0, seed=0)
    dp.private_mean(current, big)
    assert dp.clip == pytest.approx(math.exp(0.2 * 0.5))  # none under the clip: it grows
    small = [{"w": torch.tensor([0.01, 0.0])} for _ in range(4)]
    before = dp.clip
    dp.private_mean(current, small)
    assert dp.clip == pytest.approx(before * math.exp(-0.2 * 0.5))  # all under: it shrinks


def test_adaptive_clip_splits_the_noise_as_andrew_et_al():
    dp = ClientDP(DPConfig(mode="client", adaptive_clip=True, count_noise=1.0), 20, 0.1, noise_multiplier=1.0, seed=0)
    assert dp.update_noise == pytest.approx((1.0 - 0.25) ** -0.5)


def test_ffa_lora_trains_only_b(tiny):
    plain = prepare(load_config(None, tiny(**{"method.name": "lora"})))
    ffa = prepare(load_config(None, tiny(**{"method.name": "lora", "method.ffa": True})))
    assert any("lora_A" in n for n in plain.params)
    assert not any("lora_A" in n for n in ffa.params) and any("lora_B" in n for n in ffa.params)
    a_plain = {n: p for n, p in plain.model.named_parameters() if "lora_A" in n}
    a_ffa = {n: p for n, p in ffa.model.named_parameters() if "lora_A" in n}
    assert all(torch.equal(a_plain[n], a_ffa[n]) for n in a_plain)  # the same seeded A everywhere


@pytest.mark.parametrize("override, message", [
    (["fl.dropout=1.5"], "fl.dropout = 1.5: must be a probability in [0, 1]"),
    (["fl.stragglers=-0.1"], "fl.stragglers = -0.1: must be a probability"),
    (["dp.mode=\"client\"", "dp.clip=0"], "dp.clip = 0.0: must be > 0"),
    (["dp.mode=\"client\"", "dp.target_epsilon=1e-9"], "dp.target_epsilon = 1e-09: cannot be met in 2 rounds"),
    (["fl.min_clients=3"], "fl.min_clients = 3: must be <= fl.clients_per_round (2)"),
    (["method.name=\"bias\"", "method.ffa=true"], "method.ffa = true is a lora option"),
    (["dp.mode=\"client\"", "fl.mode=\"central\""], "dp.mode = 'client' needs fl.mode = 'federated'"),
])
def test_bad_privacy_and_stability_input(tmp_path, tiny, capsys, override, message):
    from fedft.cli import main

    args = [a for p in tiny() + override for a in ("--set", p)]
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedft: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_no_dropout_run_is_unchanged_by_the_fates_stream():
    """With no dropout or stragglers every sampled client returns (the default run is not perturbed)."""
    fl = load_config(None, []).fl
    fates = client_fates(fl, 3, list(range(10)), [100] * 10)
    assert fates.returned == list(range(10)) and not fates.failed and not fates.late
    assert np.isclose(fl.dropout, 0.0)


def test_sample_level_dp_epsilon_is_the_worst_clients_opacus_epsilon(tiny, tmp_path):
    from opacus.accountants import RDPAccountant

    _, record = rounds_of(tmp_path, tiny, "sdp", **{"method.name": "lora", "dp.mode": "sample",
                                                     "dp.noise_multiplier": 1.1, "fl.rounds": 3, "fl.batch_size": 8})
    sizes, history = read_clients(tmp_path / "sdp")["rows"], {}
    for r in record["rounds"]:
        for cid in r["clients"]:
            history.setdefault(cid, []).append((1.1, min(1.0, 8 / sizes[cid]), -(-sizes[cid] // 8)))
        worst = 0.0
        for h in history.values():
            acc = RDPAccountant()
            for z, q, steps in h:
                for _ in range(steps):
                    acc.step(noise_multiplier=z, sample_rate=q)
            worst = max(worst, acc.get_epsilon(1e-5))
        assert r["epsilon"] == pytest.approx(worst, rel=1e-9)
    assert record["dp"]["mode"] == "sample" and record["final"]["epsilon"] == record["rounds"][-1]["epsilon"]


@pytest.mark.parametrize("extra", [{}, {"data.partition": "dirichlet", "data.min_partition_size": 5,
                                        "fl.dropout": 0.3, "fl.rounds": 4}], ids=["iid", "skewed-with-dropout"])
def test_sample_level_dp_meets_its_target_under_the_runs_real_participation(tiny, tmp_path, extra):
    """The noise is sized for the rounds each client really trains (seeded sampling, dropout): the worst client's
    epsilon, as Opacus accounts it, lands within 10% under the target (sized for the smallest client taking part in
    every round, it spent about half)."""
    _, record = rounds_of(tmp_path, tiny, "sdpt", **{"method.name": "bias", "dp.mode": "sample",
                                                      "dp.target_epsilon": 5.0, "fl.rounds": 2, **extra})
    assert 0.9 * 5.0 <= record["final"]["epsilon"] <= 5.0
    assert record["dp"]["noise_multiplier"] > 0


def test_participation_is_what_the_loop_draws(tiny, tmp_path):
    from fedft.fl.availability import client_sampler, participation, sample_clients

    config = load_config(None, tiny(**{"fl.rounds": 5, "fl.dropout": 0.4, "data.partition": "dirichlet",
                                       "data.min_partition_size": 5}))
    res = run(config, tmp_path / "run")
    sampler, n = client_sampler(config.fl), config.data.num_clients
    assert [r["clients"] for r in res.rounds] == [sample_clients(sampler, config.fl, n) for _ in res.rounds]
    sizes = read_clients(tmp_path / "run")["rows"]
    counts = participation(config.fl, sizes)
    assert sum(counts) == sum(r["returned"] for r in res.rounds) < sum(r["sampled"] for r in res.rounds)


def trained_weights(tmp_path, tiny, name, **overrides):
    """One round's trained weights (trainable.safetensors) of a run named `name`."""
    from safetensors.torch import load_file

    rounds_of(tmp_path, tiny, name, **{"fl.rounds": 1, **overrides})
    return load_file(str(tmp_path / name / "trainable.safetensors"))


def quiet_and_plain(tmp_path, tiny, method):
    """(DP-SGD without noise or an effective clip, plain training): the same weights up to float rounding."""
    quiet = trained_weights(tmp_path, tiny, "quiet", **{"method.name": method, "dp.mode": "sample",
                                                        "dp.noise_multiplier": 0.0, "dp.clip": 1e6})
    plain = trained_weights(tmp_path, tiny, "plain", **{"method.name": method})
    for k in plain:
        torch.testing.assert_close(quiet[k], plain[k], atol=1e-5, rtol=1e-4, msg=k)
    return quiet, plain


def test_sample_level_dp_noise_changes_training(tiny, tmp_path):
    """DP-SGD really runs: with noise the trained head differs from the same run without it."""
    _, plain = quiet_and_plain(tmp_path, tiny, "head")
    noisy = trained_weights(tmp_path, tiny, "noisy", **{"method.name": "head", "dp.mode": "sample",
                                                        "dp.noise_multiplier": 5.0})
    assert any(not torch.allclose(noisy[k], plain[k], atol=1e-3) for k in plain)


def test_sample_level_dp_full_fine_tuning_clips_per_example_gradients_of_every_weight(tiny, tmp_path):
    """Full fine-tuning under DP-SGD: BERT's position table is looked up with one (1, length) row for the whole batch;
    each example still gets its own gradient of it (Opacus failed to clip a batch-size-1 gradient before), and with
    no noise and no effective clip the trained weights are plain training's, position table included."""
    quiet, plain = quiet_and_plain(tmp_path, tiny, "full")
    assert any("position_embeddings" in k for k in plain) and quiet.keys() == plain.keys()


def test_sample_dp_refuses_what_opacus_cannot_do(tmp_path, tiny, capsys):
    from fedft.cli import main

    args = [a for p in tiny() + ['method.name="prompt"', "method.deep=true", 'dp.mode="sample"']
            for a in ("--set", p)]
    assert main(["run", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dp.mode = 'sample': Opacus cannot compute per-sample gradients for" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
