"""FedEx-LoRA: the aggregated effective weight is exactly W + s sum_i p_i B_i A_i (unequal client weights), the
dense residual is counted going down, and the run resumes bit-identically (tests/test_resume.py has its row)."""
import json

import pytest
import torch

import fedft
from fedft.api import prepare
from fedft.config import load_config
from fedft.driver import assemble
from fedft.fl.client import load_state, read_state
from fedft.fl.messages import Update
from fedft.methods.lora_fold import lora_pairs


def test_effective_weight_is_the_exact_weighted_mean_of_the_clients_updates(tiny):
    exp = prepare(load_config(None, tiny(**{"method.variant": "fedex", "method.rank": 4})))
    b = assemble(exp)
    pairs = lora_pairs(exp.params)
    assert pairs
    start = read_state(exp.params)
    base0 = {pre: exp.model.get_parameter(pre + ".base_layer.weight").detach().clone() for _, _, pre in pairs}
    g = torch.Generator().manual_seed(0)
    sizes = [5, 17, 40]
    updates = [Update(cid=i, state={k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()},
                      num_examples=n) for i, n in enumerate(sizes)]
    new = b.fed.strategy.aggregate(1, start, updates)
    load_state(exp.params, new)
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    for a, bk, pre in pairs:
        s = float(exp.model.get_submodule(pre).scaling["default"])
        w = exp.model.get_parameter(pre + ".base_layer.weight").double()
        effective = w + s * exp.params[bk].double() @ exp.params[a].double()
        want = base0[pre].double() + s * sum(pi * u.state[bk].double() @ u.state[a].double()
                                             for pi, u in zip(p, updates))
        assert torch.allclose(effective, want, atol=1e-6, rtol=0), (pre, (effective - want).abs().max())
        plain = base0[pre].double() + s * exp.params[bk].double() @ exp.params[a].double()
        assert (plain - want).abs().max() > 1e-4  # averaging A and B alone would have missed it


def test_fedex_run_counts_the_dense_residual_going_down(tiny, tmp_path):
    sent = {}
    for variant in ("fedavg", "fedex"):
        result = fedft.run(load_config(None, tiny(**{"method.variant": variant, "fl.rounds": 3})), tmp_path / variant)
        data = json.loads((result.out_dir / "results.json").read_text())
        sent[variant] = (data["final"]["bytes_up"], data["final"]["bytes_down"])
    assert sent["fedex"][0] == sent["fedavg"][0]
    assert data["fedex"]["folds"] == 3 and data["fedex"]["fold_bytes"] > 0
    # rounds 2 and 3: each of the 2 sampled clients missed at least the previous fold
    assert sent["fedex"][1] == sent["fedavg"][1] + 4 * data["fedex"]["fold_bytes"]
    assert (result.out_dir / "base_weights.safetensors").is_file()


@pytest.mark.parametrize("extra, message", [
    ({"method.name": "bias"}, "is a lora option"),
    ({"fl.strategy": "fedadam"}, "needs fl.strategy = 'fedavg' or 'fedprox'"),
    ({"dp.mode": "client", "dp.noise_multiplier": 1.0}, "DP-FedAvg releases only as a noised mean"),
])
def test_fedex_refusals(tiny, extra, message):
    from fedft.errors import UsageError

    with pytest.raises(UsageError, match=message):
        load_config(None, tiny(**{"method.variant": "fedex", **extra}))


def test_rolora_alternates_b_then_a_and_uploads_one_factor(tiny, tmp_path):
    """Odd rounds train and send B (A fixed, since B starts at zero), even rounds A; the head every round."""

    runs = {}
    for variant in ("fedavg", "rolora"):
        result = fedft.run(load_config(None, tiny(**{"method.variant": variant, "fl.rounds": 2, "fl.eval_every": 2})),
                           tmp_path / variant)
        runs[variant] = json.loads((result.out_dir / "results.json").read_text())
    up = [r["bytes_up"] for r in runs["rolora"]["rounds"]]
    assert all(u < f for u, f in zip(up, [r["bytes_up"] for r in runs["fedavg"]["rounds"]]))
    exp = prepare(load_config(None, tiny(**{"method.variant": "rolora"})))
    from fedft.methods.lora_rolora import trained

    names = list(exp.params)
    odd, even = trained(names, 1), trained(names, 2)
    assert not any(".lora_A." in n for n in odd) and any(".lora_B." in n for n in odd)
    assert not any(".lora_B." in n for n in even) and any(".lora_A." in n for n in even)
    assert {n for n in names if "lora" not in n} <= set(odd) & set(even)  # the head trains every round


def test_rolora_with_client_dp_is_refused_in_one_line(tiny):
    from fedft.errors import UsageError

    with pytest.raises(UsageError, match="these clients send only part of theirs"):
        load_config(None, tiny(**{"method.variant": "rolora", "dp.mode": "client", "dp.noise_multiplier": 0.5}))


def test_fedsa_clients_keep_their_own_b_and_send_only_a(tiny, tmp_path):
    """B never travels: uploads are smaller than FedAvg's, the global B stays at its initialisation, and each
    client's own model (global A, its own B) is scored on its own held-out rows."""
    from fedft.driver import assemble
    from fedft.methods.lora_fedsa import KeepB

    runs = {}
    for variant in ("fedavg", "fedsa"):
        sets = tiny(**{"method.variant": variant, "fl.rounds": 3, "data.client_test_fraction": 0.25,
                       "fl.lr": 0.05})
        result = fedft.run(load_config(None, sets), tmp_path / variant)
        runs[variant] = json.loads((result.out_dir / "results.json").read_text())
    for fa, sa in zip(runs["fedavg"]["rounds"], runs["fedsa"]["rounds"]):
        assert sa["bytes_up"] < fa["bytes_up"] and sa["bytes_down"] < fa["bytes_down"]
    assert runs["fedsa"]["final"]["client_accuracy"] is not None

    exp = prepare(load_config(None, tiny(**{"method.variant": "fedsa", "fl.rounds": 2, "fl.lr": 0.05})))
    b = assemble(exp)
    from fedft.fl.loop import federated

    init_b = {k: v.detach().clone() for k, v in exp.params.items() if ".lora_B." in k}
    rows = list(federated(b.fed))
    assert len(rows) == 2
    hook = next(h for h in b.fed.hooks if isinstance(h, KeepB))
    assert hook.own and all(set(own) == set(init_b) for own in hook.own.values())
    for k, v in init_b.items():  # the server's B never moved; the clients' own did
        assert torch.equal(exp.params[k].detach(), v)
        assert any(not torch.equal(own[k], v) for own in hook.own.values())


def test_flora_merges_the_exact_weighted_product_and_restarts_lora(tiny):
    exp = prepare(load_config(None, tiny(**{"method.variant": "flora", "method.rank": 4})))
    b = assemble(exp)
    pairs = lora_pairs(exp.params)
    start = read_state(exp.params)
    base0 = {pre: exp.model.get_parameter(pre + ".base_layer.weight").detach().clone() for _, _, pre in pairs}
    g = torch.Generator().manual_seed(2)
    sizes = [3, 11, 29]
    updates = [Update(cid=i, state={k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()},
                      num_examples=n) for i, n in enumerate(sizes)]
    new = b.fed.strategy.aggregate(1, start, updates)
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    for a, bk, pre in pairs:
        s = float(exp.model.get_submodule(pre).scaling["default"])
        w = exp.model.get_parameter(pre + ".base_layer.weight").double()
        want = base0[pre].double() + s * sum(pi * u.state[bk].double() @ u.state[a].double()
                                             for pi, u in zip(p, updates))
        assert torch.allclose(w, want, atol=1e-6, rtol=0)
        assert torch.equal(new[bk], torch.zeros_like(new[bk]))  # a fresh LoRA: B zero, A drawn anew
        assert not torch.equal(new[a], start[a]) and new[a].abs().max() <= 1 / new[a].shape[1] ** 0.5


def test_flora_counts_the_stacked_factors_going_down(tiny, tmp_path):
    sent = {}
    for variant in ("fedavg", "flora"):
        result = fedft.run(load_config(None, tiny(**{"method.variant": variant, "fl.rounds": 3})), tmp_path / variant)
        data = json.loads((result.out_dir / "results.json").read_text())
        sent[variant] = [(r["bytes_up"], r["bytes_down"]) for r in data["rounds"]]
    assert [u for u, _ in sent["flora"]] == [u for u, _ in sent["fedavg"]]
    assert sent["flora"][0][1] == sent["fedavg"][0][1]  # nothing merged before round 1
    assert all(f[1] > a[1] for f, a in zip(sent["flora"][1:], sent["fedavg"][1:]))
    assert data["flora"]["folds"] == 3 and (result.out_dir / "base_weights.safetensors").is_file()
