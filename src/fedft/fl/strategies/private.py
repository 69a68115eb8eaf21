"""Client-level DP as a wrapper around any strategy (as Flower's DifferentialPrivacyServerSide*Clipping wrap
theirs): the wrapped strategy configures the clients; the wrapper clips each update, averages them with equal
weights and adds the noise (fl/privacy.py's ClientDP), then hands the noised mean to the wrapped strategy's
server step."""
from __future__ import annotations

from fedft.fl.aggregate import State
from fedft.fl.checkpoint import object_state, restore
from fedft.fl.messages import Update
from fedft.fl.strategies.base import Strategy


class PrivateStrategy(Strategy):
    def __init__(self, inner: Strategy, dp) -> None:
        super().__init__(inner.cfg, inner.num_clients)
        self.inner, self.dp = inner, dp
        self.releases = 0  # noised averages published so far (what the accountant counts)
        self.info: dict | None = None  # this round's clip, noise and clipped count

    def client_side(self):
        return self.inner.client_side()

    def configure_train(self, rnd, cids, start):
        self.info = None
        return self.inner.configure_train(rnd, cids, start)

    def aggregate(self, rnd: int, current: State, updates: list[Update]) -> State:
        mean, self.info = self.dp.private_mean(current, [u.state for u in updates])
        self.releases += 1
        return self.inner.server_step(current, mean)

    def summary(self) -> dict:
        return {"epsilon": self.dp.epsilon(self.releases), "dp": self.info}

    def state(self) -> dict:
        return {"inner": self.inner.state(), "dp": object_state(self.dp), "releases": self.releases}

    def restore(self, state: dict) -> None:
        self.inner.restore(state["inner"])
        restore(self.dp, state["dp"])
        self.releases = state["releases"]
