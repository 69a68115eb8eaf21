"""method.variant = "fedsa": FedSA-LoRA (Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated
Learning", ICLR 2025). The A matrices learn what clients share, the B matrices what is their own: clients send only
A (and the head); each keeps its own B from round to round, which never leaves it. A client taking part for the
first time starts from B's initialisation (zeros).

Scores: each client's own model (the global A and head, its own B) on its own held-out rows (data.client_test_fraction)
is `client_accuracy`, mean and spread over clients; `accuracy` on the shared test set is the global A and head with
the mean of the clients' B (a simulation's summary: the server never sees a B).
"""
from __future__ import annotations

import dataclasses

import torch

from fedft.fl.client import load_state, read_state
from fedft.fl.client_state import ClientStates
from fedft.fl.hooks import Hook
from fedft.fl.parts import part

B = ".lora_B."


class KeepB(Hook):
    order = 15  # before attacks and validation see the upload

    def __init__(self, names, cap_mb: float = 0.0) -> None:
        self.b_names = sorted(n for n in names if B in n)
        self.init: dict | None = None
        self.own = ClientStates(cap_mb)  # each client's B (past fl.client_state_mb, on disk)

    def configure(self, rnd, instructions, log):
        for ins in instructions:  # after the wire: what the client holds itself costs no bytes
            mine = self.own.get(ins.cid, self.init)
            ins.state = {**ins.state, **mine}
        return instructions

    def sent(self, rnd, instructions, updates, log):
        for u in updates:
            self.own[u.cid] = {k: u.state[k].detach().clone() for k in self.b_names}
            u.state = {k: v for k, v in u.state.items() if k not in set(self.b_names)}
        return updates

    def mean_b(self) -> dict[str, torch.Tensor]:
        if not self.own:
            return self.init
        owns = list(self.own.values())  # (read from disk once, not once a tensor)
        return {k: torch.stack([b[k] for b in owns]).mean(0) for k in self.b_names}

    def state(self) -> dict:
        return {"own": self.own, "init": self.init}  # a checkpoint pickles every state (ClientStates.__getstate__)

    def restore(self, state: dict) -> None:
        self.own, self.init = state["own"], state["init"]


def without_b(start: dict, b_names: list[str]) -> dict:
    return {k: v for k, v in start.items() if k not in set(b_names)}


@part(45)
def fedsa(b) -> None:
    if b.exp.config.method.variant != "fedsa":
        return
    exp, fed = b.exp, b.fed
    hook = KeepB(exp.params, exp.config.fl.client_state_mb)
    hook.init = {k: exp.params[k].detach().clone() for k in hook.b_names}
    configure = fed.strategy.configure_train

    def configure_train(rnd, cids, start):  # B is never sent down: each client's instruction carries A and the head
        return [dataclasses.replace(i, state=without_b(i.state, hook.b_names)) for i in configure(rnd, cids, start)]

    fed.strategy.configure_train = configure_train
    fed.hooks.append(hook)
    plain = fed.evaluate

    def evaluate(cid=None):
        from fedft.fl.client_test import scores

        shared = read_state(exp.params)
        load_state(exp.params, {**shared, **hook.mean_b()})
        out = plain(cid)
        held = getattr(exp, "client_tests", None)
        if held:
            accs = []
            for c in range(len(held)):
                load_state(exp.params, {**shared, **hook.own.get(c, hook.init)})
                got = scores(exp.task, exp.model, b.pool.data, held, b.pool.cfg.precision, [c])
                if got:
                    accs.append(got["client_accuracy"])
            if accs:
                out.update(client_accuracy=float(torch.tensor(accs).mean()),
                           client_accuracy_std=float(torch.tensor(accs).std(unbiased=False)))
        load_state(exp.params, shared)
        return out

    fed.evaluate = evaluate
