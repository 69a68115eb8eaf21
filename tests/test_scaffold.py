"""SCAFFOLD through the strategy's instructions, its client half and the typed update: on a small convex problem
(multinomial logistic regression, full-batch SGD local steps) fedft's global iterate equals a reference written
here, and a run counts the control variates in its bytes."""
import json

import numpy as np
import torch
from torch import nn

import fedft
from fedft.config import FLConfig, load_config
from fedft.fl import comm
from fedft.fl.channel import Channel
from fedft.fl.client import TrainConfig, client_seed
from fedft.fl.loop import Federation, federated
from fedft.fl.runners import OneByOne, Pool
from fedft.fl.strategies import STRATEGIES


class Points:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        idx = torch.as_tensor(np.asarray(idx))
        return {"x": self.x[idx]}, self.y[idx]


class LogReg(nn.Module):
    def __init__(self, d, k):
        super().__init__()
        self.lin = nn.Linear(d, k)

    def forward(self, x):
        return self.lin(x)


def problem(seed=0, n=300, d=5, k=3, num_clients=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).float()
    w = torch.randn(d, k, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, k, generator=g)).argmax(1)
    order = np.argsort(y.numpy(), kind="stable")  # label-skewed clients of unequal sizes
    cuts = [0, 40, 120, 210, n]
    clients = [np.sort(order[cuts[i]:cuts[i + 1]]) for i in range(num_clients)]
    return Points(x, y), clients


def reference(data, clients, init, rounds, per_round, steps, lr, seed, controls=True):
    """SCAFFOLD, option II, written from the paper (Karimireddy et al. 2020, Algorithm 1), server lr 1
    (controls=False: the same without control variates, i.e. FedAvg with an unweighted mean)."""
    x = {k: v.clone() for k, v in init.items()}
    c = {k: torch.zeros_like(v) for k, v in x.items()}
    ci = [{k: torch.zeros_like(v) for k, v in x.items()} for _ in clients]
    sampler = np.random.default_rng(client_seed(seed, 1))
    model = LogReg(*init["lin.weight"].shape[::-1])
    for _ in range(rounds):
        sampled = sorted(sampler.choice(len(clients), per_round, replace=False).tolist())
        dys, dcs = [], []
        for i in sampled:
            y = {k: v.clone().requires_grad_(True) for k, v in x.items()}
            inputs, labels = data.batch(clients[i])
            for _ in range(steps):
                loss = nn.functional.cross_entropy(torch.func.functional_call(model, y, (inputs["x"],)), labels)
                grads = torch.autograd.grad(loss, list(y.values()))
                with torch.no_grad():
                    y = {k: (v - lr * (g + c[k] - ci[i][k])).requires_grad_(True)
                         for (k, v), g in zip(y.items(), grads)}
            new_ci = {k: ci[i][k] - c[k] + (x[k] - y[k].detach()) / (steps * lr) for k in x}
            dys.append({k: y[k].detach() - x[k] for k in x})
            dcs.append({k: new_ci[k] - ci[i][k] for k in x})
            ci[i] = new_ci
        x = {k: x[k] + sum(d[k] for d in dys) / len(dys) for k in x}
        if controls:
            c = {k: c[k] + len(sampled) / len(clients) * sum(d[k] for d in dcs) / len(dcs) for k in c}
        else:
            ci = [{k: torch.zeros_like(v) for k, v in x.items()} for _ in clients]
    return x


def test_scaffold_matches_a_reference_on_logistic_regression():
    data, clients = problem()
    model = LogReg(5, 3)
    params = dict(model.named_parameters())
    init = {k: p.detach().clone() for k, p in params.items()}
    rounds, per_round, steps, lr = 6, 2, 5, 0.5
    fl = FLConfig(rounds=rounds, clients_per_round=per_round, strategy="scaffold", optimizer="sgd", lr=lr,
                  eval_every=100)
    cfg = TrainConfig(epochs=steps, batch_size=1000, lr=lr, optimizer="sgd")  # full batch: one step per epoch
    strategy = STRATEGIES.get("scaffold", "fl.strategy")(fl, len(clients))
    pool = Pool(model, params, data, clients, cfg, fl.seed, client=strategy.client_side())
    fed = Federation(params, len(clients), fl, strategy, OneByOne(pool), Channel("float32"),
                     evaluate=lambda: {"accuracy": 0.0, "loss": 0.0})
    rows = list(federated(fed))
    expected = reference(data, clients, init, rounds, per_round, steps, lr, fl.seed)
    for k in expected:
        assert torch.allclose(params[k].detach(), expected[k], atol=1e-6), k
    fedavg = reference(data, clients, init, rounds, per_round, steps, lr, fl.seed, controls=False)
    assert (expected["lin.weight"] - fedavg["lin.weight"]).abs().max() > 1e-3  # the control variates matter
    payload = len(comm.encode(init, "float32"))  # c and delta c have x's shapes
    assert all(r.bytes_down == r.bytes_up == 2 * payload * per_round for r in rows)  # x + c down, y + dc up


def test_scaffold_run_counts_the_control_variates_and_resumes(tmp_path, tiny):
    sets = tiny(**{"method.name": "bias", "fl.strategy": "scaffold", "fl.optimizer": "sgd", "fl.lr": 0.05,
                   "fl.rounds": 2})
    result = fedft.run(load_config(None, sets), tmp_path / "run")
    plain = fedft.run(load_config(None, tiny(**{"method.name": "bias", "fl.optimizer": "sgd", "fl.lr": 0.05,
                                                "fl.rounds": 2})), tmp_path / "plain")
    for a, b in zip(result.rounds, plain.rounds):
        assert a["bytes_down"] == 2 * b["bytes_down"] and a["bytes_up"] == 2 * b["bytes_up"]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "completed" and record["config"]["fl"]["strategy"] == "scaffold"
