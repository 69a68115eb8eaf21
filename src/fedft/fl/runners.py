"""Client runners: how the sampled clients' local training is carried out. Each takes the round's instructions and
returns the updates that came back, so the loop never asks how clients train.

- `OneByOne`: one client after another over the one shared model (and the partial training of method layers).
- `Batched`: K clients at a time in lockstep, one vmap computation (fl/batched.py); equal up to float rounding.
- `SampleDP`: one by one with DP-SGD (Opacus), each client accounted for the steps it took.
- remote: fedft.deploy's FlowerClients sends each instruction to the client's SuperNode, which runs `OneByOne`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from fedft.fl.batched import train_batched
from fedft.fl.client import TrainConfig, client_seed, load_state, local_train
from fedft.fl.messages import Instruction, Update
from fedft.fl.parts import Build, part
from fedft.fl.strategies.base import ClientSide


@dataclass
class Pool:
    """The simulated clients: the one shared model, its trainable parameters, the training examples, each
    client's indices into them, and how they train locally."""
    model: nn.Module
    params: dict[str, nn.Parameter]
    data: object  # examples with .batch(idx) and len()
    clients: list[np.ndarray]
    cfg: TrainConfig
    seed: int  # fl.seed: each client's local randomness is client_seed(seed, round, cid)
    tick: Callable[[], None] = field(default=lambda: None)  # after each client's local training (progress bar)
    client: ClientSide = field(default_factory=ClientSide)  # the strategy's half on the clients (SCAFFOLD)


class Runner:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def train(self, rnd: int, instructions: list[Instruction]) -> list[Update]:
        raise NotImplementedError

    def summary(self) -> dict:
        """Fields this runner adds to the round's row (sample-level DP: epsilon spent)."""
        return {}

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


class OneByOne(Runner):
    def train(self, rnd, instructions):
        updates = []
        for ins in instructions:
            updates.append(self.one(rnd, ins))
            self.pool.tick()
        return updates

    def config(self, ins: Instruction) -> TrainConfig:
        cfg = self.pool.cfg
        return cfg if ins.prox_mu == cfg.prox_mu else dataclasses.replace(cfg, prox_mu=ins.prox_mu)

    def one(self, rnd: int, ins: Instruction, private=None) -> Update:
        p, seed = self.pool, client_seed(self.pool.seed, rnd, ins.cid)
        fix, penalty = p.client.correction(ins), p.client.penalty(ins)
        if ins.train is None:
            update = local_train(p.model, p.params, ins.state, p.data, p.clients[ins.cid], self.config(ins), seed,
                                 private=private, cid=ins.cid, correction=fix, penalty=penalty)
        else:  # only ins.train (the rest frozen at the start state, so backward stops early)
            load_state(p.params, ins.state)
            keep = set(ins.train)
            for name, t in p.params.items():
                t.requires_grad_(name in keep)
            try:
                update = local_train(p.model, {n: p.params[n] for n in ins.train},
                                     {n: ins.state[n] for n in ins.train}, p.data, p.clients[ins.cid],
                                     self.config(ins), seed, private=private, cid=ins.cid, correction=fix,
                                     penalty=penalty)
            finally:
                for t in p.params.values():
                    t.requires_grad_(True)
        update.extras.update(p.client.report(ins, update, p.cfg.lr))
        return update


class Batched(OneByOne):
    """`k` clients at a time as one computation (clients that train only part of the state, or under a penalty, go
    one by one). On running out of device memory, k halves and the chunk is redone."""

    def __init__(self, pool: Pool, k: int) -> None:
        super().__init__(pool)
        self.k = k

    def train(self, rnd, instructions):
        if any(ins.train is not None or self.pool.client.penalty(ins) is not None for ins in instructions):
            return super().train(rnd, instructions)
        p, updates, i = self.pool, [], 0
        while i < len(instructions):
            chunk = instructions[i: i + self.k]
            if self.k == 1:  # (after halving) one at a time; a short last chunk is still batched, as it always was
                updates.append(self.one(rnd, chunk[0]))
            else:
                fixes = [p.client.correction(c) for c in chunk]
                try:
                    done = train_batched(p.model, p.params, [c.state for c in chunk], p.data,
                                         [p.clients[c.cid] for c in chunk], self.config(chunk[0]),
                                         [client_seed(p.seed, rnd, c.cid) for c in chunk], [c.cid for c in chunk],
                                         fixes if fixes[0] is not None else None)
                except torch.OutOfMemoryError:  # too many at once for the device: halve and redo this chunk
                    torch.cuda.empty_cache()
                    self.k //= 2
                    continue
                for c, update in zip(chunk, done):
                    update.extras.update(p.client.report(c, update, p.cfg.lr))
                updates += done
            for _ in chunk:
                p.tick()
            i += len(chunk)
        return updates


class SampleDP(OneByOne):
    """DP-SGD in every client (fl/privacy.py's SampleDP: Opacus' per-sample clipping and noise), one at a time,
    each client's accountant charged for the steps it took at its own sampling rate."""

    def __init__(self, pool: Pool, dp) -> None:
        super().__init__(pool)
        self.dp = dp

    def train(self, rnd, instructions):
        updates = []
        for ins in instructions:
            update = self.one(rnd, ins, private=self.dp)
            n = len(self.pool.clients[ins.cid])
            if n:
                self.dp.record(ins.cid, update.steps, min(1.0, self.pool.cfg.batch_size / n))
            updates.append(update)
            self.pool.tick()
        return updates

    def summary(self):
        return {"epsilon": self.dp.epsilon()}

    def state(self):
        return {"history": {c: list(h) for c, h in self.dp.history.items()}}

    def restore(self, state):
        self.dp.history = state["history"]


def parallel_clients(fl, model: nn.Module) -> int:
    """fl.parallel_clients, with 0 (auto) resolved: on a CPU batching clients gains nothing (the model is
    compute-bound at a client's batch already; measured in benchmarks/engine.py), so 1; elsewhere every
    sampled client at once."""
    if fl.parallel_clients:
        return fl.parallel_clients
    on_cpu = next(model.parameters()).device.type == "cpu"
    return 1 if on_cpu else fl.clients_per_round


@part(20)
def batched(b: Build) -> None:
    """fl.parallel_clients > 1 (or auto on a GPU): clients train K at a time."""
    k = parallel_clients(b.exp.config.fl, b.pool.model)
    if k > 1:
        b.fed.runner = Batched(b.pool, k)
