"""FedAvg (McMahan et al.) and FedProx (Li et al.: FedAvg with a proximal term in local training)."""
from fedft.fl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    pass


@STRATEGIES.register("fedprox")
class FedProx(Strategy):
    def prox_mu(self) -> float:
        return self.cfg.mu
