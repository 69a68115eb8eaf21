"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020),
with option II's control-variate update.

Down, each sampled client gets the global model x and the server control c (both counted in bytes); it keeps its
own control c_i (zero until it first trains). Each local SGD step uses the gradient g + c - c_i. After K steps
at learning rate lr ending at y_i, the client's new control is c_i+ = c_i - c + (x - y_i) / (K lr) (option II), and
it sends y_i and delta c_i = c_i+ - c_i (both counted). The server moves x by server_lr times the mean of
(y_i - x) and c by |S| / N times the mean of delta c_i (S: the clients that returned, N: all clients).
Clients' controls are kept by the strategy here (in a simulation the server holds every client's memory), past
fl.client_state_mb on disk (fl/client_state.py); they go into checkpoints with it.
"""
from __future__ import annotations

import torch

from fedft.fl.aggregate import State
from fedft.fl.client_state import ClientStates
from fedft.fl.messages import Instruction, Update
from fedft.fl.strategies.base import STRATEGIES, ClientSide, Strategy


class ScaffoldClient(ClientSide):
    def correction(self, ins: Instruction) -> State:
        c, mine = ins.extras["control"], ins.held["control"]
        return {k: c[k] - mine[k] for k in c}

    def report(self, ins: Instruction, update: Update, lr: float) -> dict[str, State]:
        c, x = ins.extras["control"], ins.state
        if update.steps == 0:  # no data: the control stays
            return {"control_delta": {k: torch.zeros_like(v) for k, v in c.items()}}
        scale = 1.0 / (update.steps * lr)
        return {"control_delta": {k: (x[k] - update.state[k]) * scale - c[k] for k in c}}


@STRATEGIES.register("scaffold")
class Scaffold(Strategy):
    def __init__(self, cfg, num_clients=0):
        super().__init__(cfg, num_clients)
        self.server_lr = cfg.server_lr or 1.0
        self.c: State | None = None  # the server control
        self.controls = ClientStates(cfg.client_state_mb)  # each client's own c_i (those that have trained)

    def client_side(self) -> ClientSide:
        return ScaffoldClient()

    def configure_train(self, rnd, cids, start):
        if self.c is None:
            self.c = {k: torch.zeros_like(v) for k, v in start.items()}
        zero = {k: torch.zeros_like(v) for k, v in self.c.items()}
        return [Instruction(cid, start, extras={"control": self.c}, held={"control": self.controls.get(cid, zero)})
                for cid in cids]

    def aggregate(self, rnd, current, updates):
        kept = [u for u in updates if u.num_examples > 0]
        if not kept:
            return current
        n = len(kept)
        for u in kept:
            mine = self.controls.get(u.cid)
            delta = u.extras["control_delta"]
            self.controls[u.cid] = {k: (mine[k] if mine is not None else 0) + delta[k] for k in delta}
        share = n / max(self.num_clients, n)
        self.c = {k: self.c[k] + share * sum(u.extras["control_delta"][k] for u in kept) / n for k in self.c}
        return {k: current[k] + self.server_lr * sum(u.state[k] - current[k] for u in kept) / n for k in current}
