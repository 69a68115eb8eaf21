"""Cross-client batching: K clients trained in lockstep as one computation over the shared frozen model.

Each client's trainable tensors and AdamW state are stacked along a leading client dimension, and one
`torch.func.vmap(grad(...))` over `functional_call` computes every client's gradient at once, so the
device sees one K-times larger batch instead of K small ones. A client takes exactly the batches it would
take alone (same seed, same order); at step t only the clients with more than t batches take part, and
a short last batch is padded with zero-weight copies of one of its rows. So the result equals training
the clients one after another up to float rounding, except for dropout, whose masks are drawn per client
but from a different random stream.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from fedft.fl.client import State, TrainConfig, Update, default_loss, lengths_for, shuffled_batches
from fedft.fl.precision import autocast

Stack = dict[str, torch.Tensor]  # name -> (K, *shape)


@dataclass
class AdamW:
    """torch.optim.AdamW's update (its defaults: betas 0.9/0.999, eps 1e-8), as a pure function on stacked
    tensors, so every client keeps its own moments."""
    lr: float
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def step(self, params: Stack, grads: Stack, m: Stack, v: Stack, t: int) -> tuple[Stack, Stack, Stack]:
        """One step (t counts from 1) -> new (params, m, v)."""
        c1, c2 = 1 - self.beta1 ** t, math.sqrt(1 - self.beta2 ** t)
        out_p, out_m, out_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k]
            p = p * (1 - self.lr * self.weight_decay) if self.weight_decay else p
            out_m[k] = torch.lerp(m[k], g, 1 - self.beta1)
            out_v[k] = v[k] * self.beta2 + (1 - self.beta2) * g * g
            out_p[k] = p - (self.lr / c1) * out_m[k] / (out_v[k].sqrt() / c2 + self.eps)
        return out_p, out_m, out_v


@dataclass
class SGD:
    """torch.optim.SGD's update (dampening 0, L2 weight decay added to the gradient), on stacked tensors; the
    momentum buffer lives in `m` (zeros at the start, which gives torch's first step), `v` is unused."""
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.0

    def step(self, params: Stack, grads: Stack, m: Stack, v: Stack, t: int) -> tuple[Stack, Stack, Stack]:
        out_p, out_m = {}, {}
        for k, p in params.items():
            g = grads[k] + self.weight_decay * p if self.weight_decay else grads[k]
            if self.momentum:
                out_m[k] = m[k] * self.momentum + g
                g = out_m[k]
            else:
                out_m[k] = m[k]
            out_p[k] = p - self.lr * g
        return out_p, out_m, v


def stack_inputs(parts: list[dict[str, torch.Tensor]], labels: list[torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """K clients' batches -> inputs (K, B, ...), labels (K, B), weights (K, B). Shorter batches get zero-weight
    copies of their first row; shorter sequences are padded with masked-out zeros."""
    rows = max(len(y) for y in labels)
    out = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        padded = []
        for t in tensors:
            pad = []
            for d in reversed(range(1, t.dim())):
                pad += [0, shape[d - 1] - t.shape[d]]
            t = nn.functional.pad(t, pad) if any(pad) else t
            padded.append(torch.cat([t, t[:1].expand(rows - len(t), *t.shape[1:])]) if len(t) < rows else t)
        out[key] = torch.stack(padded)
    y = torch.stack([torch.cat([l, l[:1].expand(rows - len(l))]) for l in labels])
    w = torch.stack([(torch.arange(rows) < len(l)).to(torch.float32) for l in labels])
    return out, y, w


class _AutocastUnderVmap(TorchFunctionMode):
    """Two ops whose vmapped backward fails under CPU bf16 autocast (torch 2.13, "expected scalar type ... but
    found ..."), done here the way the one-by-one path does them, with autocast's casts made by hand:
    - a layer norm gets a bf16 input with fp32 weights; the one-by-one kernel normalizes in fp32 and rounds its
      output to bf16. Here the input is upcast and normalized in fp32, and the next autocast op rounds it.
    - attention with dropout: autocast runs it in bf16 (every floating input cast); the same casts are made by
      hand and the op runs with autocast off, which vmap differentiates."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is nn.functional.layer_norm and args[0].dtype == torch.bfloat16:
            args = (args[0].float(), *args[1:])
        elif func is nn.functional.scaled_dot_product_attention and torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            cast = lambda x: x.to(low) if isinstance(x, torch.Tensor) and x.is_floating_point() else x  # noqa: E731
            with torch.autocast("cpu", enabled=False):
                return func(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def train_batched(model: nn.Module, params: dict[str, nn.Parameter], starts: list[State], data,
                  clients: list[np.ndarray], cfg: TrainConfig, seeds: list[int], cids: list[int] | None = None,
                  corrections: list[State] | None = None) -> list[Update]:
    """Train client c (its indices clients[c] into `data`) from starts[c], all in lockstep, as
    `local_train(model, params, starts[c], data, clients[c], cfg, seeds[c])` would; one Update per client."""
    names = list(params)
    device = next(iter(params.values())).device
    k_all = len(clients)
    plans = [shuffled_batches(idx, cfg.batch_size, cfg.epochs, np.random.default_rng(seed),
                               lengths_for(data, cfg, idx))
             if len(idx) else [] for idx, seed in zip(clients, seeds)]
    anchor = {n: torch.stack([s[n] for s in starts]).to(device) for n in names}  # FedProx: each client's start
    stack = {n: t.clone() for n, t in anchor.items()}
    m = {n: torch.zeros_like(t) for n, t in stack.items()}
    v = {n: torch.zeros_like(t) for n, t in stack.items()}
    opt = SGD(cfg.lr, cfg.weight_decay, cfg.momentum) if cfg.optimizer == "sgd" else AdamW(cfg.lr, cfg.weight_decay)
    fix = {n: torch.stack([c[n] for c in corrections]).to(device) for n in names} if corrections else None
    mu = cfg.prox_mu

    def client_loss(p, inputs, labels, weights, anchor):
        with autocast(device, cfg.precision), _AutocastUnderVmap():
            logits = functional_call(model, p, (), inputs, strict=False)
        ce = ((cfg.loss or default_loss())(logits, labels, reduction="none") * weights).sum() / weights.sum()
        objective = ce + 0.5 * mu * sum(((p[k] - anchor[k]) ** 2).sum() for k in p) if mu > 0 else ce
        return objective, ce

    step_fn = vmap(grad(client_loss, has_aux=True), randomness="different")
    loss_sum = torch.zeros(k_all, dtype=torch.float64, device=device)  # per client, summed on the device
    was_training = model.training
    model.train()
    if seeds:
        torch.manual_seed(seeds[0])  # dropout inside the model
    try:
        with _stacked_masks(model):
            for t in range(max((len(p) for p in plans), default=0)):
                active = [c for c in range(k_all) if t < len(plans[c])]
                batches = [data.batch(plans[c][t]) for c in active]
                inputs, labels, weights = stack_inputs([b[0] for b in batches], [b[1] for b in batches])
                inputs = {k: x.to(device) for k, x in inputs.items()}
                whole = len(active) == k_all
                sel = torch.tensor(active, device=device)
                pick = (lambda s: s) if whole else (lambda s: {n: x.index_select(0, sel) for n, x in s.items()})
                p, mm, vv = pick(stack), pick(m), pick(v)
                grads, ce = step_fn(p, inputs, labels.to(device), weights.to(device), pick(anchor))
                if fix is not None:  # SCAFFOLD: c - c_i added to each client's gradient
                    grads = {n: g + pick(fix)[n] for n, g in grads.items()}
                with torch.no_grad():
                    p, mm, vv = opt.step({n: x.detach() for n, x in p.items()}, grads, mm, vv, t + 1)
                if whole:
                    stack, m, v = p, mm, vv
                else:
                    for full, part in ((stack, p), (m, mm), (v, vv)):
                        for n in names:
                            full[n] = full[n].index_copy(0, sel, part[n])
                loss_sum.index_add_(0, sel, ce.detach().double())
    finally:
        model.train(was_training)
    mean_loss = (loss_sum.cpu() / torch.tensor([max(len(p), 1) for p in plans])).tolist()
    cids = list(range(k_all)) if cids is None else cids
    return [Update(cids[c], {n: stack[n][c].detach().clone() for n in names} if len(idx) else dict(starts[c]),
                   len(idx), mean_loss[c] if plans[c] else float("nan"), len(plans[c]))
            for c, idx in enumerate(clients)]


@contextlib.contextmanager
def _stacked_masks(model: nn.Module):
    """Text models build their attention mask with data-dependent checks that vmap cannot trace; while
    batching, the classifier hands them a ready 4-D mask instead."""
    classifiers = [m for m in model.modules() if hasattr(m, "expand_mask")]
    for c in classifiers:
        c.expand_mask = True
    try:
        yield
    finally:
        for c in classifiers:
            c.expand_mask = False
