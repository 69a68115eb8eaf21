"""FedAvgM (Hsu et al.): server momentum on the pseudo-gradient current - mean."""
from fedft.fl.aggregate import State, subtract
from fedft.fl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("fedavgm")
class FedAvgM(Strategy):
    def __init__(self, cfg, num_clients=0):
        super().__init__(cfg, num_clients)
        self.lr = cfg.server_lr or 1.0
        self.velocity: State | None = None

    def server_step(self, current: State, mean: State) -> State:
        delta = subtract(current, mean)  # pseudo-gradient
        if self.velocity is None:
            self.velocity = delta
        else:
            self.velocity = {k: self.cfg.server_momentum * self.velocity[k] + delta[k] for k in delta}
        return {k: current[k] - self.lr * self.velocity[k] for k in current}
