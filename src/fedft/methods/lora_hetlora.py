"""method.variant = "hetlora": HetLoRA (Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device
Foundation Models", EMNLP 2024), on top of the heterogeneous ranks of methods/lora_ranks.py (zero-padding there).

- Sparsity-weighted aggregation: the server averages the zero-padded A and B with weights proportional to the size
  of each client's update, S_i = ||B_i A_i||_F (over all adapted modules), instead of the data sizes; the head and
  anything not LoRA keep FedAvg's data weights.
- Rank self-pruning: a client of rank r trains with lambda * sum_modules ||B[:, t:r] A[t:r]||_F added to its loss,
  t = floor(gamma r) (the last components, at least one); when local training left that tail smaller than the one
  it received, the tail did not matter to it and the client prunes: its rank becomes t from then on (and its upload
  already has rank t). Our reading of "smaller than before" is "than what it received this round" (the paper
  compares with the previous round). method.prune_lambda = 0 turns pruning off.
The ranks as they stand go into checkpoints (resume stays bit-identical) and results.json (lora_ranks.ranks, with
hetlora.ranks_start and hetlora.prunes).
"""
from __future__ import annotations

import math

import torch

from fedft.fl.hooks import Hook
from fedft.fl.parts import part
from fedft.fl.strategies.base import ClientSide
from fedft.methods.lora_fold import weights_of


def tail_start(r: int, gamma: float) -> int:
    """Where the pruned tail of a rank-r LoRA starts: floor(gamma r), leaving at least one component in the tail."""
    return min(math.floor(gamma * r), r - 1)


def tail_norm(state: dict, pairs, r: int, gamma: float) -> torch.Tensor:
    """sum over modules of ||B[:, t:r] A[t:r]||_F (differentiable in the state's tensors)."""
    t = tail_start(r, gamma)
    return sum(torch.linalg.matrix_norm(state[b][:, t:r] @ state[a][t:r]) for a, b, _ in pairs)


def sparsity_weights(states: list[dict], pairs) -> torch.Tensor:
    """p_i proportional to ||B_i A_i||_F (the whole update, over all modules); data-free. All zero: equal weights."""
    s = torch.tensor([math.sqrt(sum(float((st[b].double() @ st[a].double()).square().sum()) for a, b, _ in pairs))
                      for st in states], dtype=torch.float64)
    return s / s.sum() if s.sum() > 0 else torch.full_like(s, 1 / len(s))


class TailPenalty(ClientSide):
    """The strategy's own client side, plus the self-pruning penalty on each client's tail at its current rank."""

    def __init__(self, inner: ClientSide, pairs, ranks, gamma: float, lam: float) -> None:
        self.inner, self.pairs, self.ranks, self.gamma, self.lam = inner, pairs, ranks, gamma, lam

    def correction(self, ins):
        return self.inner.correction(ins)

    def report(self, ins, update, lr):
        return self.inner.report(ins, update, lr)

    def penalty(self, ins):
        r = int(self.ranks[ins.cid])
        if self.lam == 0 or r < 2:
            return None
        return lambda params: self.lam * tail_norm(params, self.pairs, r, self.gamma)


class Prune(Hook):
    """On the clients, before the rank cut of the upload (lora_ranks.Ranks, order 12): a client whose tail shrank
    prunes it."""
    order = 11

    def __init__(self, pairs, ranks, gamma: float) -> None:
        self.pairs, self.ranks, self.gamma = pairs, ranks, gamma
        self.start = [int(r) for r in ranks]
        self.prunes = 0

    def sent(self, rnd, instructions, updates, log):
        received = {i.cid: i.state for i in instructions}
        pruned = 0
        for u in updates:
            r = int(self.ranks[u.cid])
            if r < 2 or u.num_examples == 0:
                continue
            with torch.no_grad():
                if tail_norm(u.state, self.pairs, r, self.gamma) < tail_norm(received[u.cid], self.pairs, r, self.gamma):
                    self.ranks[u.cid] = tail_start(r, self.gamma)
                    pruned += 1
        self.prunes += pruned
        log.fields["pruned"] = pruned
        return updates

    def state(self) -> dict:
        return {"prunes": self.prunes}

    def restore(self, state: dict) -> None:
        self.prunes = state["prunes"]

    def describe(self) -> dict:
        return {"hetlora": {"ranks_start": self.start, "prunes": self.prunes}}


@part(46)  # after lora_ranks (44): its Ranks hook and rank array
def hetlora(b) -> None:
    cfg = b.exp.config.method
    if cfg.variant != "hetlora":
        return
    ranks_hook = next(h for h in b.fed.hooks if type(h).__name__ == "Ranks")
    pairs, ranks = ranks_hook.pairs, ranks_hook.ranks
    if cfg.prune_lambda > 0:
        b.fed.hooks.append(Prune(pairs, ranks, cfg.prune_gamma))
    strategy = b.fed.strategy
    inner, client_side = strategy.aggregate, strategy.client_side

    def aggregate(rnd, current, updates):
        new = inner(rnd, current, updates)  # the head: FedAvg's data-weighted mean
        weighted, _ = weights_of(updates)
        if weighted:
            p = sparsity_weights([u.state for u in weighted], pairs)
            for a, bk, _ in pairs:
                new[a] = sum(float(pi) * u.state[a] for pi, u in zip(p, weighted))
                new[bk] = sum(float(pi) * u.state[bk] for pi, u in zip(p, weighted))
        return new

    strategy.aggregate = aggregate
    strategy.client_side = lambda: TailPenalty(client_side(), pairs, ranks, cfg.prune_gamma, cfg.prune_lambda)
