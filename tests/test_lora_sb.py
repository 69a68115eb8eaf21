"""lora_sb (LoRA-SB / Fed-SB): B and A are fixed from the top singular vectors of the clients' mean gradient, the
model starts as the pre-trained one, only R (r x r) and the head travel, and averaging R averages the clients'
updates B R_i A exactly."""
import json

import numpy as np
import pytest
import torch

import fedft
from fedft.api import prepare
from fedft.config import load_config
from fedft.driver import assemble
from fedft.errors import UsageError
from fedft.fl.client import client_seed, read_state
from fedft.fl.messages import Update
from fedft.methods.lora_sb import approximate_update, sb_modules


def test_basis_is_the_top_singular_subspace_of_the_mean_gradient_and_the_model_starts_pretrained(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "lora_sb", "method.rank": 4})))
    b = assemble(exp)
    modules = sb_modules(exp.model)
    assert modules and all(set(n for n, _ in m.sb.named_parameters()) == {"R"} for m in modules.values())
    basis = next(h for h in b.fed.hooks if type(h).__name__ == "Basis")
    assert len(basis.init_clients) == 2 and basis.up > 0 and basis.down > 0
    again = approximate_update(exp.model, modules, b.pool.data, [exp.clients[c] for c in basis.init_clients],
                               16, 4, exp.task.loss, "fp32", client_seed(0, 13))  # as the run did
    for name, m in modules.items():
        B, A = m.sb.B.double(), m.sb.A.double()
        assert torch.allclose(B.T @ B, torch.eye(4, dtype=torch.float64), atol=1e-5)
        assert torch.allclose(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-5)
        g = again[name]
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        assert torch.allclose(B @ (B.T @ g @ A.T) @ A, best, atol=1e-4 * float(s[0]))  # the same rank-4 subspace
        assert torch.equal(m.sb.R, torch.zeros(4, 4))
    inputs, _ = exp.test.batch(np.arange(6))
    exp.model.eval()
    with torch.no_grad():
        out = exp.model(**inputs)
        for m in modules.values():
            m.sb.B.zero_()
        assert torch.equal(out, exp.model(**inputs))  # R = 0: the adapted model is the pre-trained one


def test_averaging_r_is_averaging_the_updates(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "lora_sb", "method.rank": 4})))
    b = assemble(exp)
    start = read_state(exp.params)
    g = torch.Generator().manual_seed(2)
    sizes = [5, 11, 30]
    updates = [Update(cid, {k: v + torch.randn(v.shape, generator=g) for k, v in start.items()}, n)
               for cid, n in enumerate(sizes)]
    new = b.fed.strategy.aggregate(1, start, updates)
    p = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
    for name, m in sb_modules(exp.model).items():
        key = next(k for k in start if k.startswith(name) and k.endswith(".sb.R"))
        B, A = m.sb.B.double(), m.sb.A.double()
        mean_of_updates = sum(pi * B @ u.state[key].double() @ A for pi, u in zip(p, updates))
        assert torch.allclose(B @ new[key].double() @ A, mean_of_updates, atol=1e-6)


def test_only_r_and_the_head_travel_and_the_initialisation_is_counted(tiny, tmp_path):
    sb = fedft.run(load_config(None, tiny(**{"method.name": "lora_sb", "method.rank": 4})), tmp_path / "sb")
    lora = fedft.run(load_config(None, tiny(**{"method.name": "lora", "method.rank": 4})), tmp_path / "lora")
    data = json.loads((sb.out_dir / "results.json").read_text())
    assert sb.final["payload_bytes"] < lora.final["payload_bytes"]
    assert data["lora_sb"]["init_bytes_up"] > 0 and len(data["lora_sb"]["init_clients"]) == 2
    rounds = data["rounds"]
    assert rounds[0]["bytes_up"] == sb.final["payload_bytes"] * 2 + data["lora_sb"]["init_bytes_up"]
    assert rounds[1]["bytes_up"] == sb.final["payload_bytes"] * 2
    new = [c for c in rounds[1]["clients"] if c not in rounds[0]["clients"]]  # B and A go down once a client
    assert rounds[1]["bytes_down"] == sb.final["payload_bytes"] * 2 + data["lora_sb"]["basis_bytes"] * len(new)


@pytest.mark.parametrize("extra, words", [
    ({"dp.mode": "client", "dp.noise_multiplier": 0.5}, "raw gradients"),
    ({"fl.mode": "local"}, "needs fl.mode = 'federated'"),
    ({"method.variant": "fedex"}, "is a lora option"),
])
def test_lora_sb_refuses_what_it_cannot_do(tiny, extra, words):
    with pytest.raises(UsageError, match=words):
        load_config(None, tiny(**{"method.name": "lora_sb", **extra})).check()


def test_rank_above_the_weights_width_is_refused(tiny):
    with pytest.raises(UsageError, match="use a rank <= 32"):
        prepare(load_config(None, tiny(**{"method.name": "lora_sb", "method.rank": 40})))
