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


def _stack(states: list[State], key: str) -> torch.Tensor:
    return torch.stack([s[key].to(torch.float64) for s in states])


def coordinate_median(states: list[State]) -> State:
    """Each coordinate's median over the states (for an even count, the mean of the two middle values, as
    numpy's and Flower's FedMedian)."""
    out = {}
    for key in states[0]:
        x = _stack(states, key).sort(dim=0).values
        n = x.shape[0]
        med = x[n // 2] if n % 2 else (x[n // 2 - 1] + x[n // 2]) / 2
        out[key] = med.to(states[0][key].dtype)
    return out


def trimmed_mean(states: list[State], beta: float) -> State:
    """Each coordinate's mean after dropping its floor(beta * n) smallest and largest values (as Flower's
    FedTrimmedAvg), unweighted."""
    n = len(states)
    cut = int(beta * n)
    if 2 * cut >= n:
        raise ValueError(f"trimming {cut} from each end of {n} updates leaves nothing")
    return {key: _stack(states, key).sort(dim=0).values[cut: n - cut].mean(dim=0).to(states[0][key].dtype)
            for key in states[0]}


def krum_select(states: list[State], byzantine: int, keep: int) -> list[int]:
    """Multi-Krum (Blanchard et al.): the `keep` states with the smallest Krum score, the sum of squared
    distances to their n - byzantine - 2 nearest others (at least 1). keep = 1 is Krum."""
    n = len(states)
    flat = torch.stack([torch.cat([s[k].reshape(-1).to(torch.float64) for k in states[0]]) for s in states])
    d2 = torch.cdist(flat, flat).pow(2)
    closest = max(n - byzantine - 2, 1)
    scores = [float(torch.sort(torch.cat([d2[i, :i], d2[i, i + 1:]])).values[:closest].sum()) for i in range(n)]
    return sorted(range(n), key=lambda i: (scores[i], i))[:max(1, min(keep, n))]
