"""Heterogeneous LoRA ranks (method.rank_min .. method.rank_max): each client's rank r_i is drawn once (seeded) and
recorded, as the layer budgets are. The global LoRA has rank rank_max; a client receives the first r_i components
(A[:r_i], B[:, :r_i]), trains them, and sends them back: the bytes both ways are those of its own rank. On the
client the missing components are zero, and stay zero (their gradients are zero), so its model is its rank-r_i LoRA.

How the server combines the ranks is method.variant: fedavg zero-pads each update to rank_max and averages by data
size; hetlora adds HetLoRA's sparsity-weighted aggregation and rank self-pruning (methods/lora_hetlora.py); flexlora (Bai et al., "FlexLoRA", NeurIPS 2024) forms the exact weighted mean of the
clients' products sum_i p_i B_i A_i and keeps its truncated SVD at rank_max, ordered by singular value, so that each
client's first r_i components are the best rank-r_i approximation of the aggregate.
"""
from __future__ import annotations

import dataclasses

import torch

from fedft.fl.client import client_seed
from fedft.fl.hooks import Hook
from fedft.fl.parts import part
from fedft.fl.selection import budgets
from fedft.methods.lora_fold import lora_pairs, weights_of


def truncate(state: dict, pairs, r: int) -> dict:
    out = dict(state)
    for a, b, _ in pairs:
        if a in out:
            out[a] = out[a][:r].clone()
        if b in out:
            out[b] = out[b][:, :r].clone()
    return out


def pad(state: dict, pairs, r_max: int) -> dict:
    out = dict(state)
    for a, b, _ in pairs:
        if a in out and out[a].shape[0] < r_max:
            out[a] = torch.cat([out[a], out[a].new_zeros(r_max - out[a].shape[0], out[a].shape[1])])
        if b in out and out[b].shape[1] < r_max:
            out[b] = torch.cat([out[b], out[b].new_zeros(out[b].shape[0], r_max - out[b].shape[1])], dim=1)
    return out


def svd_factors(product: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A the best rank-r approximation of `product`, components by decreasing singular value."""
    u, s, vh = torch.linalg.svd(product.double(), full_matrices=False)
    root = s[:r].sqrt()
    return (u[:, :r] * root).float(), (root[:, None] * vh[:r]).float()


class Ranks(Hook):
    """Pads what a client received back to rank_max (after the wire) and cuts its upload to its rank (before)."""
    order = 12

    def __init__(self, pairs, ranks, r_max: int) -> None:
        self.pairs, self.ranks, self.r_max = pairs, ranks, r_max

    def configure(self, rnd, instructions, log):
        for ins in instructions:
            ins.state = pad(ins.state, self.pairs, self.r_max)
        return instructions

    def sent(self, rnd, instructions, updates, log):
        for u in updates:
            u.state = truncate(u.state, self.pairs, int(self.ranks[u.cid]))
        return updates

    def received(self, rnd, instructions, updates, log):
        for u in updates:
            u.state = pad(u.state, self.pairs, self.r_max)
        return updates

    def describe(self) -> dict:
        return {"lora_ranks": {"rank_max": self.r_max, "ranks": [int(r) for r in self.ranks]}}

    def state(self) -> dict:  # HetLoRA's self-pruning lowers ranks as the run goes (methods/lora_hetlora.py)
        return {"ranks": [int(r) for r in self.ranks]}

    def restore(self, state: dict) -> None:
        self.ranks[:] = state["ranks"]


@part(44)
def lora_ranks(b) -> None:
    cfg = b.exp.config.method
    if cfg.name != "lora" or not (cfg.rank_max or cfg.variant in ("flexlora", "hetlora")):
        return
    pairs = lora_pairs(b.exp.params)
    r_max = cfg.rank_max or cfg.rank
    low = cfg.rank_min if cfg.rank_max else cfg.rank
    ranks = budgets(len(b.exp.clients), low, r_max, client_seed(b.exp.config.fl.seed, 8))
    hook = Ranks(pairs, ranks, r_max)
    configure = b.fed.strategy.configure_train

    def configure_train(rnd, cids, start):  # before the wire: each client's own rank goes down
        return [dataclasses.replace(i, state=truncate(i.state, pairs, int(ranks[i.cid])))
                for i in configure(rnd, cids, start)]

    b.fed.strategy.configure_train = configure_train
    b.fed.hooks.append(hook)
    if cfg.variant == "flexlora":
        inner = b.fed.strategy.aggregate

        def aggregate(rnd, current, updates):
            new = inner(rnd, current, updates)  # the head: the data-weighted mean
            weighted, p = weights_of(updates)
            if weighted:
                for a, bk, _ in pairs:
                    product = sum(float(pi) * u.state[bk].double() @ u.state[a].double() for pi, u in zip(p, weighted))
                    new[bk], new[a] = svd_factors(product, r_max)
            return new

        b.fed.strategy.aggregate = aggregate
