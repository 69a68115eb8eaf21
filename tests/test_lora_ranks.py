"""Heterogeneous LoRA ranks: each client's rank is drawn, recorded and resumed; it receives and sends only its own
components; FlexLoRA hands each client the best rank-r_i approximation of the exact weighted mean of the products."""
import json

import torch

import fedft
from fedft.api import prepare
from fedft.config import load_config
from fedft.driver import assemble
from fedft.fl.client import read_state
from fedft.fl.messages import Update
from fedft.methods.lora_fold import lora_pairs
from fedft.methods.lora_ranks import pad, truncate


def test_padding_and_truncation_round_trip():
    pairs = [("m.lora_A.default.weight", "m.lora_B.default.weight", "m")]
    g = torch.Generator().manual_seed(0)
    full = {"m.lora_A.default.weight": torch.randn(8, 5, generator=g), "m.lora_B.default.weight": torch.randn(6, 8, generator=g),
            "head.weight": torch.randn(3, 5, generator=g)}
    cut = truncate(full, pairs, 3)
    assert cut["m.lora_A.default.weight"].shape == (3, 5) and cut["m.lora_B.default.weight"].shape == (6, 3)
    back = pad(cut, pairs, 8)
    assert torch.equal(back["m.lora_A.default.weight"][:3], full["m.lora_A.default.weight"][:3])
    assert torch.equal(back["m.lora_A.default.weight"][3:], torch.zeros(5, 5))
    assert torch.equal(back["m.lora_B.default.weight"][:, 3:], torch.zeros(6, 5))
    assert torch.equal(back["head.weight"], full["head.weight"])
    assert torch.equal(truncate(back, pairs, 3)["m.lora_B.default.weight"], cut["m.lora_B.default.weight"])


def test_flexlora_gives_each_client_the_best_approximation_at_its_rank(tiny):
    exp = prepare(load_config(None, tiny(**{"method.variant": "flexlora", "method.rank_min": 2, "method.rank_max": 6})))
    b = assemble(exp)
    pairs = lora_pairs(exp.params)
    start = read_state(exp.params)
    ranks = next(h for h in b.fed.hooks if type(h).__name__ == "Ranks").ranks
    g = torch.Generator().manual_seed(3)
    sizes = [4, 9, 21]
    updates = []
    for cid, n in enumerate(sizes):  # each client trained only its own components
        state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()}
        updates.append(Update(cid=cid, state=pad(truncate(state, pairs, int(ranks[cid])), pairs, 6), num_examples=n))
    new = b.fed.strategy.aggregate(1, start, updates)
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    for cid in range(len(exp.clients)):
        (ins,) = b.fed.strategy.configure_train(2, [cid], new)
        r = int(ranks[cid])
        for a, bk, _ in pairs:
            assert ins.state[a].shape[0] == r and ins.state[bk].shape[1] == r  # only its own components go down
            agg = sum(pi * u.state[bk].double() @ u.state[a].double() for pi, u in zip(p, updates))
            u, s, vh = torch.linalg.svd(agg)
            best = (u[:, :r] * s[:r]) @ vh[:r]
            assert torch.allclose(ins.state[bk].double() @ ins.state[a].double(), best, atol=1e-5), (cid, a)


def test_ranks_are_recorded_and_uploads_follow_them(tiny, tmp_path):
    sets = tiny(**{"method.rank_min": 2, "method.rank_max": 8, "fl.rounds": 2})
    data = {}
    for name, extra in (("uniform", {"method.rank": 8}), ("hetero", {})):
        result = fedft.run(load_config(None, tiny(**{"fl.rounds": 2, **extra})) if name == "uniform"
                           else load_config(None, sets), tmp_path / name)
        data[name] = json.loads((result.out_dir / "results.json").read_text())
    ranks = data["hetero"]["lora_ranks"]["ranks"]
    assert len(ranks) == 4 and all(2 <= r <= 8 for r in ranks) and data["hetero"]["lora_ranks"]["rank_max"] == 8
    again = prepare(load_config(None, sets))
    b = assemble(again)
    assert [int(r) for r in next(h for h in b.fed.hooks if type(h).__name__ == "Ranks").ranks] == ranks
    for h, u in zip(data["hetero"]["rounds"], data["uniform"]["rounds"]):
        assert h["bytes_up"] <= u["bytes_up"] and h["bytes_down"] <= u["bytes_down"]
    assert any(h["bytes_up"] < u["bytes_up"] for h, u in zip(data["hetero"]["rounds"], data["uniform"]["rounds"]))


def test_a_clients_missing_components_stay_zero_while_it_trains(tiny):
    """The client's model is its rank-r_i LoRA: the components past r_i are zero when it starts and after it trained
    (their gradients are zero), before its upload is cut to its rank."""
    from fedft.fl.loop import federated

    exp = prepare(load_config(None, tiny(**{"method.rank_min": 1, "method.rank_max": 6, "fl.rounds": 1,
                                            "fl.lr": 0.05})))
    b = assemble(exp)
    hook = next(h for h in b.fed.hooks if type(h).__name__ == "Ranks")
    seen, cut = [], hook.sent

    def check(rnd, instructions, updates, log):
        for u in updates:
            r = int(hook.ranks[u.cid])
            for a, bk, _ in hook.pairs:
                assert torch.equal(u.state[a][r:], torch.zeros_like(u.state[a][r:]))
                assert torch.equal(u.state[bk][:, r:], torch.zeros_like(u.state[bk][:, r:]))
                assert u.state[a][:r].abs().sum() > 0
            seen.append(u.cid)
        return cut(rnd, instructions, updates, log)

    hook.sent = check
    list(federated(b.fed))
    assert len(seen) == 2
