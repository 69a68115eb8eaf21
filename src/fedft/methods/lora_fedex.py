"""method.variant = "fedex": FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", ACL 2025). Averaging A and B separately is not averaging the clients' updates:
mean(B) mean(A) != mean(B A). FedEx-LoRA averages A and B as FedAvg does and folds the residual

    R = sum_i p_i B_i A_i - (sum_i p_i B_i)(sum_i p_i A_i)

(scaled by LoRA's alpha / r) into the frozen weight of every adapted module, each round, so that the global
effective weight is exactly W + s sum_i p_i B_i A_i, with p_i the clients' data weights (unequal weights included).
The residual is dense (d_out x d_in per module): a client that missed folds receives their sum, one dense payload
counted in bytes down
(methods/lora_fold.py: the frozen weights in checkpoints and in the export).
"""
from __future__ import annotations

import torch

from fedft.fl import comm
from fedft.fl.parts import part
from fedft.methods.lora_fold import FoldHook, lora_pairs, weights_of


def residuals(states: list[dict], p: torch.Tensor, pairs) -> dict[str, torch.Tensor]:
    """Per module prefix: sum_i p_i B_i A_i - (sum_i p_i B_i)(sum_i p_i A_i)."""
    out = {}
    for a, b, prefix in pairs:
        As = torch.stack([s[a].double() for s in states])
        Bs = torch.stack([s[b].double() for s in states])
        exact = torch.einsum("i,ior,irk->ok", p, Bs, As)
        out[prefix] = (exact - torch.einsum("i,ior->or", p, Bs) @ torch.einsum("i,irk->rk", p, As)).float()
    return out


@part(45)
def fedex(b) -> None:
    if b.exp.config.method.variant != "fedex":
        return
    hook = FoldHook(b.exp.model, lora_pairs(b.exp.params), "fedex", summable=True)
    inner, dtype = b.fed.strategy.aggregate, b.exp.config.comm.dtype

    def aggregate(rnd, current, updates):
        new = inner(rnd, current, updates)  # FedAvg / FedProx: the data-weighted means of A and B
        weighted, p = weights_of(updates)
        if weighted:
            res = residuals([u.state for u in weighted], p, hook.pairs)
            hook.add(res, len(comm.encode({k: hook.scaling[k] * v for k, v in res.items()}, dtype)))
        return new

    b.fed.strategy.aggregate = aggregate
    b.fed.hooks.append(hook)
