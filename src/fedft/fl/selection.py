"""Selective layer fine-tuning ("Exploring Selective Layer Fine-Tuning in Federated Learning", methods.md
section 4): which layers each client trains, within its budget.

Pure functions: per-client budgets, the fixed strategies (top, bottom, random), per-layer importance from
gradients, and the server's choice of masks m (clients x layers) maximising

    sum_i sum_l m_il g_il  -  lambda * sum_l sum_{i<j} (m_il - m_jl)^2      s.t.  sum_l m_il = b_i

(each client trains exactly its budget). With c_l clients on layer l out of n, the penalty is
lambda * sum_l c_l (n - c_l). Importances are normalised to sum to 1 per client, so lambda is on the scale of
one client's whole importance. Small problems are solved exactly (scipy's MILP, HiGHS); large ones by local
search from each client's top-b_i (coordinate ascent over clients; each step cannot lower the objective).
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


def objective(masks: np.ndarray, g: np.ndarray, lam: float) -> float:
    masks = masks.astype(np.float64)
    counts = masks.sum(0)
    return float((masks * g).sum() - lam * (counts * (len(masks) - counts)).sum())


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
    cost = np.concatenate([-g.ravel(), np.tile(lam * k * (n - k), L)])
    rows, lo, hi = [], [], []
    for i in range(n):  # budgets
        r = np.zeros(nm + nz)
        r[i * L:(i + 1) * L] = 1
        rows.append(r), lo.append(b[i]), hi.append(b[i])
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
    """Coordinate ascent: start from each client's top-b_i; then, client by client, pick the b_i layers with the
    best marginal value g_il - lam * (n - 2 c'_l - 1) given the others' counts c'_l, until nothing changes."""
    n, L = g.shape
    masks = top_b(g, b)
    if fixed is not None:
        masks[~free] = fixed[~free]
    counts = masks.sum(0).astype(np.int64)
    for _ in range(max_sweeps):
        changed = False
        for i in np.flatnonzero(free):
            others = counts - masks[i]
            value = g[i] - lam * (n - 2 * others - 1)
            new = np.zeros(L, dtype=bool)
            new[np.argsort(-value, kind="stable")[: b[i]]] = True
            if (new != masks[i]).any() and value[new].sum() > value[masks[i]].sum() + 1e-12:
                counts += new.astype(np.int64) - masks[i]
                masks[i] = new
                changed = True
        if not changed:
            break
    return masks
