"""One small Strategy interface (after Flower's strategies): configure clients, aggregate their updates."""
from __future__ import annotations

from fedft.config import FLConfig
from fedft.fl.aggregate import State, partial_average, weighted_average
from fedft.fl.client import Update
from fedft.registry import Registry

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")


class Strategy:
    """FedAvg's shape: the data-weighted mean of the returned states, then `server_step`."""

    def __init__(self, cfg: FLConfig) -> None:
        self.cfg = cfg

    def prox_mu(self) -> float:
        """Proximal weight the clients use this run (FedProx); 0 = plain local training."""
        return 0.0

    def aggregate(self, current: State, updates: list[Update]) -> State:
        """Each parameter averaged over the updates that carry it (all of them, except under method layers, where
        a client sends only the layers it trained); a parameter no update carries keeps its current value."""
        weighted = [u for u in updates if u.num_examples > 0]
        if not weighted:
            return current
        if all(u.state.keys() == current.keys() for u in weighted):
            mean = weighted_average([u.state for u in weighted], [u.num_examples for u in weighted])
        else:
            mean = partial_average(current, [u.state for u in weighted], [u.num_examples for u in weighted])
        return self.server_step(current, mean)

    def server_step(self, current: State, mean: State) -> State:
        """The next global state from the current one and the clients' weighted mean."""
        return mean
