"""FedAdam (Reddi et al., "Adaptive Federated Optimization"): Adam on the server over mean - current."""
import torch

from fedft.fl.aggregate import State, subtract
from fedft.fl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("fedadam")
class FedAdam(Strategy):
    def __init__(self, cfg, num_clients=0):
        super().__init__(cfg, num_clients)
        self.lr = cfg.server_lr or 0.01
        self.m: State | None = None
        self.v: State | None = None
        self.t = 0

    def server_step(self, current: State, mean: State) -> State:
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        delta = subtract(mean, current)
        if self.m is None:
            self.m = {k: torch.zeros_like(d) for k, d in delta.items()}
            self.v = {k: torch.zeros_like(d) for k, d in delta.items()}
        self.t += 1
        self.m = {k: b1 * self.m[k] + (1 - b1) * delta[k] for k in delta}
        self.v = {k: b2 * self.v[k] + (1 - b2) * delta[k] ** 2 for k in delta}
        step = self.lr * (1 - b2 ** self.t) ** 0.5 / (1 - b1 ** self.t)  # bias correction, as in Flower's FedAdam
        return {k: current[k] + step * self.m[k] / (self.v[k].sqrt() + self.cfg.tau) for k in current}
