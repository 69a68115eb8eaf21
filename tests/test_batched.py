"""Cross-client batching gives what training the clients one after another gives."""
import numpy as np
import pytest
import torch
from torch import nn

from fedft.api import prepare
from fedft.config import load_config
from fedft.fl.batched import AdamW, train_batched
from fedft.fl.client import TrainConfig, client_seed, local_train, read_state
from test_methods import MODELS, OWN


def no_dropout(model: nn.Module) -> None:
    """Dropout masks come from different random streams batched and one by one; without dropout the two
    must agree to float rounding."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


def both_ways(exp, clients, cfg):
    start = read_state(exp.params)
    seeds = [client_seed(0, 1, c) for c in range(len(clients))]
    one_by_one = [local_train(exp.model, exp.params, start, exp.train, idx, cfg, s) for idx, s in zip(clients, seeds)]
    batched = train_batched(exp.model, exp.params, [start] * len(clients), exp.train, clients, cfg, seeds)
    return start, one_by_one, batched


# Adam divides by sqrt(v): where a gradient is ~0, float noise of either path becomes a step of up to lr
# (1e-2 here). The tolerance is 1% of one such step. A key projection's bias has exactly zero gradient
# (softmax ignores a shift shared by all keys), so its steps are pure noise: no basis for comparison.
KEY_BIAS = ("key.bias", "k_proj.bias")


def assert_same(one_by_one, batched, atol):
    for a, b in zip(one_by_one, batched):
        assert a.num_examples == b.num_examples
        assert a.state.keys() == b.state.keys()
        for k in a.state:
            if k.endswith(KEY_BIAS):
                continue
            torch.testing.assert_close(b.state[k], a.state[k], atol=atol, rtol=1e-4, msg=k)
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(OWN))
def test_batched_equals_one_by_one_with_unequal_clients(tiny, method, model):
    exp = prepare(load_config(None, tiny(**{**MODELS[model], "model.name": model, "method.name": method})))
    no_dropout(exp.model)
    # unequal sizes: 2 batches + a short one, 1 short batch, 1 full batch, and an empty client
    b = exp.config.fl.batch_size
    pool = np.arange(len(exp.train))
    clients = [pool[: 2 * b + 3], pool[b: b + 5], pool[3: 3 + b], pool[:0]]
    cfg = TrainConfig(epochs=2, batch_size=b, lr=1e-2, weight_decay=0.01, group_by_length=True)
    start, one_by_one, batched = both_ways(exp, clients, cfg)
    assert_same(one_by_one, batched, atol=1e-4)
    moved = [k for k in start if not torch.equal(start[k], batched[0].state[k])]
    assert moved, "training moved nothing"
    assert all(torch.equal(batched[3].state[k], start[k]) for k in start) and batched[3].num_examples == 0


def test_batched_fedprox_equals_one_by_one(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "lora"})))
    no_dropout(exp.model)
    clients = [np.arange(0, 40), np.arange(40, 57)]
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, prox_mu=0.5, group_by_length=True)
    _, one_by_one, batched = both_ways(exp, clients, cfg)
    assert_same(one_by_one, batched, atol=1e-4)


def test_adamw_matches_torch():
    torch.manual_seed(0)
    p0 = torch.randn(3, 5)
    grads = [torch.randn(3, 5) for _ in range(4)]
    ref = nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.05)
    mine = AdamW(0.1, 0.05)
    p, m, v = {"w": p0.clone()[None]}, {"w": torch.zeros(1, 3, 5)}, {"w": torch.zeros(1, 3, 5)}
    for t, g in enumerate(grads, start=1):
        ref.grad = g.clone()
        opt.step()
        p, m, v = mine.step(p, {"w": g[None]}, m, v, t)
    torch.testing.assert_close(p["w"][0], ref.detach())


@pytest.mark.parametrize("method", ["bias", "head"])  # head: batched over cached features
def test_run_with_parallel_clients_matches_sequential(tiny, tmp_path, method):
    """The whole federated loop: fl.parallel_clients batches the sampled clients (ViT: no dropout)."""
    from fedft.api import run

    image = {**MODELS["tiny-vit"], "model.name": "tiny-vit", "method.name": method, "fl.rounds": 2}
    seq = run(load_config(None, tiny(**image, **{"fl.parallel_clients": 1})), tmp_path / "seq")
    par = run(load_config(None, tiny(**image, **{"fl.parallel_clients": 2})), tmp_path / "par")
    assert [r["clients"] for r in seq.rounds] == [r["clients"] for r in par.rounds]
    for a, b in zip(seq.rounds, par.rounds):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["bytes_up"] == b["bytes_up"]


def test_batched_sgd_with_momentum_and_scaffold_corrections_equals_one_by_one(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "lora"})))
    no_dropout(exp.model)
    b = exp.config.fl.batch_size
    pool = np.arange(len(exp.train))
    clients = [pool[: 2 * b + 3], pool[b: b + 5]]
    cfg = TrainConfig(epochs=2, batch_size=b, lr=5e-2, weight_decay=0.01, group_by_length=True, optimizer="sgd",
                      momentum=0.9)
    start = read_state(exp.params)
    g = torch.Generator().manual_seed(0)
    fixes = [{k: 0.1 * torch.randn(v.shape, generator=g) for k, v in start.items()} for _ in clients]
    seeds = [client_seed(0, 1, c) for c in range(len(clients))]
    one_by_one = [local_train(exp.model, exp.params, start, exp.train, idx, cfg, s, correction=f)
                  for idx, s, f in zip(clients, seeds, fixes)]
    batched = train_batched(exp.model, exp.params, [start] * len(clients), exp.train, clients, cfg, seeds,
                            corrections=fixes)
    assert_same(one_by_one, batched, atol=1e-5)
    plain = local_train(exp.model, exp.params, start, exp.train, clients[0], cfg, seeds[0])
    assert any(not torch.allclose(plain.state[k], one_by_one[0].state[k], atol=1e-4) for k in start)
