"""The server's checks on a client update before aggregation, and the attacks that test them (simulation only)."""
from __future__ import annotations

import math

import numpy as np
import torch

from fedft.fl.client import State, client_seed

def update_norm(state: State, start: State) -> float:
    """L2 norm of the update (state - start) over the keys the client sent."""
    return math.sqrt(sum(float((state[k].double() - start[k].double()).pow(2).sum()) for k in state))


def problem(state: State, start: State, max_norm: float) -> str | None:
    """Why the server must reject this update, or None: unknown or missing keys, wrong shape or dtype, NaN/Inf, or
    an L2 norm above max_norm (0 = no limit). A client may send a subset of the keys (method layers)."""
    extra = sorted(set(state) - set(start))
    if extra:
        return f"unknown parameter {extra[0]!r}"
    if not state:
        return "no parameters"
    for k, t in state.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return f"{k}: not a floating-point tensor"
        if t.shape != start[k].shape:
            return f"{k}: shape {tuple(t.shape)}, expected {tuple(start[k].shape)}"
        if not torch.isfinite(t).all():
            return f"{k}: NaN or Inf"
    if max_norm > 0 and (norm := update_norm(state, start)) > max_norm:
        return f"update norm {norm:.4g} > fl.max_update_norm = {max_norm:g}"
    return None


def norm_outliers(norms: list[float], ratio: float) -> list[str | None]:
    """For each update norm, whether it is far out of line with the round's others: above ratio times their median
    (0 = no check). Returns the why-line or None per update. With fewer than 3 updates there is no majority to
    compare against, so none is flagged."""
    if ratio <= 0 or len(norms) < 3:
        return [None] * len(norms)
    med = float(np.median(norms))
    return [f"update norm {n:.4g} > fl.max_norm_ratio = {ratio:g} x the round's median {med:.4g}"
            if n > ratio * med else None for n in norms]


def malicious_clients(num_clients: int, fraction: float, seed: int) -> set[int]:
    """The clients that attack (fixed for the run, seeded): round(fraction * num_clients) of them."""
    n = int(round(fraction * num_clients))
    return set(np.random.default_rng(client_seed(seed, 7)).choice(num_clients, n, replace=False).tolist())


def attack(kind: str, scale: float, start: State, state: State, seed: int) -> State:
    """A malicious client's update from its honest one: sign_flip sends start - scale * delta, scale sends
    start + scale * delta, random sends start plus Gaussian noise with scale times the honest update's norm."""
    if kind == "sign_flip":
        return {k: start[k] - scale * (v - start[k]) for k, v in state.items()}
    if kind == "scale":
        return {k: start[k] + scale * (v - start[k]) for k, v in state.items()}
    g = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(v.shape, generator=g, dtype=torch.float32).to(v.dtype) for k, v in state.items()}
    n_noise = math.sqrt(sum(float(t.double().pow(2).sum()) for t in noise.values())) or 1.0
    factor = scale * update_norm(state, start) / n_noise
    return {k: start[k] + factor * noise[k] for k in state}
