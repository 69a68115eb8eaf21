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


def partial_average(current: State, states: list[State], weights: list[float]) -> State:
    """Key by key, the weighted average over only the states that have the key; a key none has keeps its value
    in `current` (the very tensor, so it stays bit-identical)."""
    out = {}
    for key, value in current.items():
        having = [(s[key], w) for s, w in zip(states, weights) if key in s]
        out[key] = weighted_average([{key: t} for t, _ in having], [w for _, w in having])[key] if having else value
    return out


def subtract(a: State, b: State) -> State:
    return {k: a[k] - b[k] for k in a}
