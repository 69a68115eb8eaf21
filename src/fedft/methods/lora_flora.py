"""method.variant = "flora": FLoRA (Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with
Heterogeneous Low-Rank Adaptations", NeurIPS 2024). The server stacks the clients' factors, B = [p_1 B_1 | ... |
p_k B_k] and A = [A_1; ...; A_k] (rank = the sum of the clients' ranks), whose product is exactly
sum_i p_i B_i A_i; merges that product into the frozen weights; and starts every round from a fresh LoRA (A drawn
anew, from one seeded generator, B zero). Clients download the stacked factors of every merge they missed (counted
in bytes down at comm.dtype), not a dense matrix (methods/lora_fold.py: the frozen weights in checkpoints and in
the export).
"""
from __future__ import annotations

import math

import torch

from fedft.fl import comm
from fedft.fl.client import client_seed
from fedft.fl.parts import part
from fedft.methods.lora_fold import FoldHook, lora_pairs, weights_of


def stacked(states: list[dict], p: torch.Tensor, pairs) -> tuple[dict, dict]:
    """(per module prefix: the stacked B and A), B_stack @ A_stack = sum_i p_i B_i A_i."""
    bs, as_ = {}, {}
    for a, b, prefix in pairs:
        bs[prefix] = torch.cat([float(pi) * s[b] for pi, s in zip(p, states)], dim=1)
        as_[prefix] = torch.cat([s[a] for s in states], dim=0)
    return bs, as_


def fresh_a(shape, rnd: int, seed: int, key: str) -> torch.Tensor:
    """A new A as peft initialises it (Kaiming-uniform, a = sqrt(5)), the same on every client and run."""
    g = torch.Generator().manual_seed(client_seed(seed, 10 ** 6 + 11, rnd) + sum(map(ord, key)))
    bound = 1 / math.sqrt(shape[1])  # kaiming_uniform_(a=sqrt(5)) on a (r, d_in) weight
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


@part(45)
def flora(b) -> None:
    if b.exp.config.method.variant != "flora":
        return
    hook = FoldHook(b.exp.model, lora_pairs(b.exp.params), "flora", summable=False)
    inner, dtype, seed = b.fed.strategy.aggregate, b.exp.config.comm.dtype, b.exp.config.fl.seed

    def aggregate(rnd, current, updates):
        new = inner(rnd, current, updates)  # the head (and anything not LoRA): the data-weighted mean
        weighted, p = weights_of(updates)
        if not weighted:
            return new
        bs, as_ = stacked([u.state for u in weighted], p, hook.pairs)
        hook.add({k: bs[k] @ as_[k] for k in bs},
                 len(comm.encode({**{f"{k}.B": v for k, v in bs.items()}, **{f"{k}.A": v for k, v in as_.items()}},
                                 dtype)))
        for a, bk, prefix in hook.pairs:  # a fresh LoRA for the next round
            new[a] = fresh_a(tuple(current[a].shape), rnd, seed, a)
            new[bk] = torch.zeros_like(current[bk])
        return new

    b.fed.strategy.aggregate = aggregate
    b.fed.hooks.append(hook)
