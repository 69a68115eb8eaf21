"""HetLoRA: zero-padded heterogeneous ranks averaged with weights proportional to each client's update norm
||B_i A_i||_F (the head by data size), and rank self-pruning: the penalty shrinks a client's last components, and a
client whose tail shrank trains and sends a lower rank from then on, as recorded in results.json."""
import json

import pytest
import torch

import fedft
from fedft.api import prepare
from fedft.config import load_config
from fedft.driver import assemble
from fedft.errors import UsageError
from fedft.fl.client import read_state
from fedft.fl.messages import Instruction, Update
from fedft.methods.lora_fold import lora_pairs
from fedft.methods.lora_hetlora import tail_norm, tail_start
from fedft.methods.lora_ranks import pad, truncate


def test_tail_is_the_last_components_and_at_least_one():
    assert [tail_start(r, 0.9) for r in (2, 5, 8, 10, 20)] == [1, 4, 7, 9, 18]
    assert tail_start(8, 0.5) == 4 and tail_start(3, 0.99) == 2


def test_sparsity_weighted_aggregation(tiny):
    exp = prepare(load_config(None, tiny(**{"method.variant": "hetlora", "method.rank_min": 2, "method.rank_max": 6})))
    b = assemble(exp)
    pairs = lora_pairs(exp.params)
    start = read_state(exp.params)
    ranks = next(h for h in b.fed.hooks if type(h).__name__ == "Ranks").ranks
    g = torch.Generator().manual_seed(5)
    sizes, scales = [4, 9, 21], [0.05, 0.2, 1.0]
    updates = []
    for cid, (n, sc) in enumerate(zip(sizes, scales)):
        state = {k: v + sc * torch.randn(v.shape, generator=g) for k, v in start.items()}
        updates.append(Update(cid=cid, state=pad(truncate(state, pairs, int(ranks[cid])), pairs, 6), num_examples=n))
    new = b.fed.strategy.aggregate(1, start, updates)
    norms = torch.tensor([sum(float((u.state[bk].double() @ u.state[a].double()).square().sum()) for a, bk, _ in pairs)
                          ** 0.5 for u in updates], dtype=torch.float64)
    p = norms / norms.sum()
    for a, bk, _ in pairs:
        for key in (a, bk):
            want = sum(float(pi) * u.state[key].double() for pi, u in zip(p, updates))
            assert torch.allclose(new[key].double(), want, atol=1e-6), key
    data = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    head = [k for k in start if k.startswith("head") or "modules_to_save" in k]
    assert head
    for k in head:  # not LoRA: FedAvg's data weights
        assert torch.allclose(new[k].double(), sum(float(d) * u.state[k].double() for d, u in zip(data, updates)),
                              atol=1e-6), k
    assert not torch.allclose(p, data)  # the two weightings differ here, so the checks above tell them apart


def test_penalty_shrinks_the_tail_and_only_there(tiny):
    """One client's local training from the same start with and without the penalty: the penalised tail ends
    smaller; the components before it are free to grow."""
    def trained(lam):
        exp = prepare(load_config(None, tiny(**{"method.variant": "hetlora", "method.rank_min": 4,
                                                "method.rank_max": 4, "method.prune_lambda": lam, "fl.lr": 0.02})))
        b = assemble(exp)
        pairs = lora_pairs(exp.params)
        start = read_state(exp.params)
        g = torch.Generator().manual_seed(1)
        for a, bk, _ in pairs:  # a LoRA whose tail is not zero
            start[bk] = 0.3 * torch.randn(start[bk].shape, generator=g)
        (update,) = b.fed.runner.train(1, [Instruction(0, start)])
        return tail_norm(update.state, pairs, 4, 0.9), tail_norm(start, pairs, 4, 0.9)

    free, before = trained(0.0)
    held, _ = trained(5.0)
    assert held < before and held < 0.8 * free


def test_self_pruning_lowers_ranks_records_and_uploads_them(tiny, tmp_path):
    sets = tiny(**{"method.variant": "hetlora", "method.rank_min": 3, "method.rank_max": 8, "method.prune_lambda": 5.0,
                   "fl.rounds": 4, "fl.lr": 0.02})
    result = fedft.run(load_config(None, sets), tmp_path / "run")
    data = json.loads((result.out_dir / "results.json").read_text())
    start, now = data["hetlora"]["ranks_start"], data["lora_ranks"]["ranks"]
    assert all(2 <= r <= 8 for r in start) and all(n <= s for n, s in zip(now, start))
    assert sum(n < s for n, s in zip(now, start)) >= 1
    assert data["hetlora"]["prunes"] == sum(r["pruned"] for r in data["rounds"]) >= 1
    off = fedft.run(load_config(None, sets + ["method.prune_lambda=0"]), tmp_path / "off")
    plain = json.loads((off.out_dir / "results.json").read_text())
    assert plain["lora_ranks"]["ranks"] == start and "pruned" not in plain["rounds"][0]
    assert sum(r["bytes_up"] for r in data["rounds"]) < sum(r["bytes_up"] for r in plain["rounds"])


@pytest.mark.parametrize("extra, words", [
    ({"method.variant": "hetlora", "fl.strategy": "fedadam"}, "fl.strategy = 'fedavg' or 'fedprox'"),
    ({"method.variant": "hetlora", "dp.mode": "client", "dp.noise_multiplier": 0.5}, "each client's own factors"),
    ({"method.variant": "hetlora", "method.prune_gamma": 1.0}, "method.prune_gamma = 1.0"),
    ({"method.variant": "hetlora", "method.prune_lambda": -1}, "method.prune_lambda = -1"),
])
def test_hetlora_refuses_what_it_cannot_do(tiny, extra, words):
    with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, tiny(**extra)).check()
