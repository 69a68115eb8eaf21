"""Selective layer fine-tuning ("Exploring Selective Layer Fine-Tuning in Federated Learning", methods.md
section 4): which layers each client trains, within its budget.

Pure functions: per-client budgets, the fixed strategies (top, bottom, random), per-layer importance from
gradients, and the server's choice of masks m (clients x layers) maximising

    sum_i sum_l m_il g_il  -  lambda / (n - 1) * sum_l sum_{i<j} (m_il - m_jl)^2    s.t.  1 <= sum_l m_il <= b_i

(each client trains at most its budget, as the paper states, and at least one layer). With c_l clients on layer
l out of n, the penalty is lambda / (n - 1) * sum_l c_l (n - c_l).

The scale of lambda: each client's importances are normalised to sum to 1 over the layers (g_il >= 0), and the
penalty is divided by n - 1, so one client joining or leaving a layer changes it by at most lambda, whatever the
number of clients. A layer's importance is about 1 / L, so lambda = 0.01 barely moves a choice, 0.1 settles
near-ties, and around 1 the clients agree on the same layers; `consensus_lambda` finds where that happens.
Small problems are solved exactly (scipy's MILP, HiGHS); large ones by local search from each client's top-b_i
(coordinate ascent over clients; each step cannot lower the objective).
"""
from __future__ import annotations

import numpy as np

EXACT_MAX_VARIABLES = 2000  # clients x layers up to this: the MILP; above it, local search


def budgets(num_clients: int, low: int, high: int, seed: int) -> np.ndarray:
    """Each client's budget, drawn once (seeded) uniformly from low..high inclusive."""
    if low == high:
        return np.full(num_clients, low, dtype=np.int64)
    return np.random.default_rng(seed).integers(low, high + 1, size=num_clients)


def fixed_mask(strategy: str, num_layers: int, budget: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(L,) bool: top = the last `budget` layers, bottom = the first, random = a uniform draw."""
    m = np.zeros(num_layers, dtype=bool)
    if strategy == "top":
        m[num_layers - budget:] = True
    elif strategy == "bottom":
        m[:budget] = True
    elif strategy == "random":
        m[rng.choice(num_layers, budget, replace=False)] = True
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return m


def normalise(g: np.ndarray) -> np.ndarray:
    """Each row scaled to sum 1 (a row of zeros stays zero)."""
    g = np.maximum(np.asarray(g, dtype=np.float64), 0.0)
    s = g.sum(1, keepdims=True)
    return np.divide(g, s, out=np.zeros_like(g), where=s > 0)


def penalty_weight(lam: float, n: int) -> float:
    """lambda / (n - 1): the weight of sum_l c_l (n - c_l) (no penalty with one client)."""
    return lam / (n - 1) if n > 1 else 0.0


def objective(masks: np.ndarray, g: np.ndarray, lam: float) -> float:
    masks = masks.astype(np.float64)
    counts = masks.sum(0)
    return float((masks * g).sum() - penalty_weight(lam, len(masks)) * (counts * (len(masks) - counts)).sum())


def consensus(masks: np.ndarray) -> bool:
    """Every layer is trained by all the clients or by none."""
    counts = masks.sum(0)
    return bool(((counts == 0) | (counts == len(masks))).all())


def consensus_lambda(g: np.ndarray, b: np.ndarray, high: float = 100.0, rel: float = 0.02) -> float | None:
    """The smallest lambda (to `rel`, by bisection in log space from 1e-4) at which the server's choice puts every
    client on the same layers: 0 if each client's own top layers already agree, None if not even `high` does."""
    g = np.asarray(g, dtype=np.float64)
    if consensus(choose(g, b, 0.0)):
        return 0.0
    if not consensus(choose(g, b, high)):
        return None
    lo, hi = 1e-4, high
    while hi > lo * (1 + rel):
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if consensus(choose(g, b, mid)) else (mid, hi)
    return float(f"{hi:.3g}")


def top_b(g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each client's own b_i most important layers (ties: the lower layer)."""
    masks = np.zeros(g.shape, dtype=bool)
    for i, row in enumerate(g):
        masks[i, np.argsort(-row, kind="stable")[: b[i]]] = True
    return masks


def choose(g: np.ndarray, b: np.ndarray, lam: float, fixed: np.ndarray | None = None) -> np.ndarray:
    """Masks (n, L) for importances g (n, L) and budgets b (n,). `fixed` (optional, (n, L) bool) holds the masks of
    clients that keep an earlier choice (rows of all False: choose for that client); they count in the
    consistency term but do not change."""
    g = np.asarray(g, dtype=np.float64)
    b = np.minimum(np.asarray(b, dtype=np.int64), g.shape[1])
    free = np.ones(len(g), dtype=bool) if fixed is None else ~fixed.any(1)
    if lam == 0:
        out = top_b(g, b)
    elif g.size <= EXACT_MAX_VARIABLES:
        out = exact(g, b, lam, fixed, free)
    else:
        out = local_search(g, b, lam, fixed, free)
    if fixed is not None:
        out[~free] = fixed[~free]
    return out


def exact(g: np.ndarray, b: np.ndarray, lam: float, fixed: np.ndarray | None, free: np.ndarray) -> np.ndarray:
    """The optimum by mixed-integer programming. Variables: m_il, and z_lk = [c_l = k] for k = 0..n, so the
    concave count penalty becomes linear: sum_k lam * k (n - k) z_lk with sum_k z_lk = 1, sum_i m_il = sum_k k z_lk."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n, L = g.shape
    nm, nz = n * L, L * (n + 1)
    k = np.arange(n + 1)
    cost = np.concatenate([-g.ravel(), np.tile(penalty_weight(lam, n) * k * (n - k), L)])
    rows, lo, hi = [], [], []
    for i in range(n):  # budgets: at least one layer, at most b_i
        r = np.zeros(nm + nz)
        r[i * L:(i + 1) * L] = 1
        rows.append(r), lo.append(min(1, b[i])), hi.append(b[i])
    for l in range(L):
        r = np.zeros(nm + nz)
        r[nm + l * (n + 1): nm + (l + 1) * (n + 1)] = 1  # one count per layer
        rows.append(r), lo.append(1), hi.append(1)
        r = np.zeros(nm + nz)
        r[l:nm:L] = 1
        r[nm + l * (n + 1): nm + (l + 1) * (n + 1)] = -k  # the count is the number of clients on the layer
        rows.append(r), lo.append(0), hi.append(0)
    lb, ub = np.zeros(nm + nz), np.ones(nm + nz)
    if fixed is not None:
        for i in np.flatnonzero(~free):
            lb[i * L:(i + 1) * L] = ub[i * L:(i + 1) * L] = fixed[i]
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=np.ones(nm + nz),
               bounds=Bounds(lb, ub), options={"time_limit": 30})
    if res.x is None:  # no solution in time: local search
        return local_search(g, b, lam, fixed, free)
    return res.x[:nm].reshape(n, L) > 0.5


def local_search(g: np.ndarray, b: np.ndarray, lam: float, fixed: np.ndarray | None, free: np.ndarray,
                 max_sweeps: int = 50) -> np.ndarray:
    """Coordinate ascent: start from each client's top-b_i; then, client by client, pick the layers with the best
    marginal value g_il - w (n - 2 c'_l - 1) given the others' counts c'_l (w = lambda / (n - 1)): the best one,
    and then up to b_i - 1 more while their value is positive; until nothing changes."""
    n, L = g.shape
    w = penalty_weight(lam, n)
    masks = top_b(g, b)
    if fixed is not None:
        masks[~free] = fixed[~free]
    counts = masks.sum(0).astype(np.int64)
    for _ in range(max_sweeps):
        changed = False
        for i in np.flatnonzero(free):
            others = counts - masks[i]
            value = g[i] - w * (n - 2 * others - 1)
            order = np.argsort(-value, kind="stable")[: b[i]]
            new = np.zeros(L, dtype=bool)
            new[order[:1]] = True
            new[order[1:][value[order[1:]] > 0]] = True
            if (new != masks[i]).any() and value[new].sum() > value[masks[i]].sum() + 1e-12:
                counts += new.astype(np.int64) - masks[i]
                masks[i] = new
                changed = True
        if not changed:
            break
    return masks
