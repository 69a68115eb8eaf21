"""FedAvg (McMahan et al.) and FedProx (Li et al.: FedAvg with a proximal term in local training)."""
import dataclasses

from fedft.fl.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    pass


@STRATEGIES.register("fedprox")
class FedProx(Strategy):
    """Each client adds mu/2 * ||w - w_start||^2 to its local objective (sent with the instruction)."""

    def configure_train(self, rnd, cids, start):
        return [dataclasses.replace(ins, prox_mu=self.cfg.mu) for ins in super().configure_train(rnd, cids, start)]
