import pytest
import torch

from fedft.config import FLConfig
from fedft.fl.aggregate import weighted_average
from fedft.fl.messages import Update
from fedft.fl.strategies import STRATEGIES


def states():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    b = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([[1.5]])}
    c = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([[-1.0]])}
    return a, b, c


def test_weighted_average_matches_hand_computation():
    a, b, c = states()
    avg = weighted_average([a, b, c], [10, 30, 60])
    # w: (10*1 + 30*3 + 60*0)/100 = 1.0 ; (10*2 - 30*2 + 0)/100 = -0.4 ; b: (5 + 45 - 60)/100 = -0.1
    assert torch.allclose(avg["w"], torch.tensor([1.0, -0.4]))
    assert torch.allclose(avg["b"], torch.tensor([[-0.1]]))


def test_fedavg_weights_by_examples_and_skips_empty_clients():
    a, b, c = states()
    strat = STRATEGIES.get("fedavg", "fl.strategy")(FLConfig())
    out = strat.aggregate(1, c, [Update(0, a, 1), Update(0, b, 3), Update(0, c, 0)])
    assert torch.allclose(out["w"], torch.tensor([2.5, -1.0]))
    assert strat.aggregate(1, c, [Update(0, a, 0)]) is c  # nobody trained: the global state stays


def test_fedavgm_momentum_by_hand():
    cur = {"w": torch.tensor([1.0])}
    strat = STRATEGIES.get("fedavgm", "fl.strategy")(FLConfig(server_lr=0.5, server_momentum=0.9))
    s1 = strat.aggregate(1, cur, [Update(0, {"w": torch.tensor([0.0])}, 1)])  # delta 1, v 1 -> 1 - 0.5 = 0.5
    assert torch.allclose(s1["w"], torch.tensor([0.5]))
    s2 = strat.aggregate(1, s1, [Update(0, {"w": torch.tensor([0.5])}, 1)])  # delta 0, v 0.9 -> 0.5 - 0.45
    assert torch.allclose(s2["w"], torch.tensor([0.05]))


def test_fedadam_first_step_by_hand():
    cfg = FLConfig(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    strat = STRATEGIES.get("fedadam", "fl.strategy")(cfg)
    out = strat.aggregate(1, {"w": torch.tensor([1.0])}, [Update(0, {"w": torch.tensor([3.0])}, 1)])
    d = 2.0
    m, v = 0.1 * d, 0.01 * d * d
    step = 0.1 * (1 - 0.99) ** 0.5 / (1 - 0.9)
    assert out["w"].item() == pytest.approx(1.0 + step * m / (v ** 0.5 + 1e-3), rel=1e-6)


def test_fedprox_term_holds_local_training_near_the_start(tiny):

    from fedft.api import prepare
    from fedft.config import load_config
    from fedft.fl.client import TrainConfig, local_train, read_state

    exp = prepare(load_config(None, tiny(**{"method.name": "head"})))
    start = read_state(exp.params)
    idx = exp.clients[0]

    def drift(mu):
        cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, prox_mu=mu)
        update = local_train(exp.model, exp.params, start, exp.train, idx, cfg, seed=1)
        return sum(float((update.state[k] - start[k]).norm()) for k in start)

    free, held = drift(0.0), drift(1000.0)
    assert free > 0 and held < 0.2 * free


def test_fedprox_asks_clients_for_the_proximal_term():
    start = {"w": torch.zeros(2)}
    prox = STRATEGIES.get("fedprox", "fl.strategy")(FLConfig(mu=0.3)).configure_train(1, [4, 7], start)
    assert [(i.cid, i.prox_mu) for i in prox] == [(4, 0.3), (7, 0.3)] and prox[0].state is start
    plain = STRATEGIES.get("fedavg", "fl.strategy")(FLConfig(mu=0.3)).configure_train(1, [4], start)
    assert plain[0].prox_mu == 0.0
