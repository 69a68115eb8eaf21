"""Pure aggregation math on named tensors."""
from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def weighted_average(states: list[State], weights: list[float]) -> State:
    """sum_i w_i * state_i / sum_i w_i, key by key (float64 accumulation for exactness)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out = {}
    for key in states[0]:
        acc = torch.zeros_like(states[0][key], dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(states[0][key].dtype)
    return out


def subtract(a: State, b: State) -> State:
    return {k: a[k] - b[k] for k in a}
