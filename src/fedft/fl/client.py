"""Local training of one client's trainable state on its data, over the shared frozen model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from fedft.fl.messages import State, Update
from fedft.fl.precision import autocast, lowered


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_start||^2
    group_by_length: bool = False  # batch examples of similar length together
    precision: str = "fp32"  # or "bf16": autocast the forward pass (fl/precision.py)
    loss: Callable | None = None  # the task's loss(outputs, targets, reduction); None: the classify task's
    optimizer: str = "adamw"  # or "sgd" (with momentum)
    momentum: float = 0.0


def default_loss() -> Callable:
    """The loss of the default task (classify), from the task itself: fl/ writes no loss of its own."""
    from fedft.tasks import TASKS

    return TASKS.get("classify", "task.name")().loss


def client_seed(*parts: int) -> int:
    """A seed for (run seed, round, client): independent streams, the same every run."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@torch.no_grad()
def load_state(params: dict[str, nn.Parameter], state: State) -> None:
    for k, p in params.items():
        p.copy_(state[k])


def read_state(params: dict[str, nn.Parameter]) -> State:
    """A copy of the parameters, as views into one buffer (one allocation, not one per tensor: many simulated
    clients' states held until aggregation fragment the heap less; see comm._flat)."""
    tensors = list(params.values())
    if not tensors or len({(t.dtype, t.device) for t in tensors}) != 1:
        return {k: p.detach().clone() for k, p in params.items()}
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    out, at = {}, 0
    for k, t in params.items():
        out[k] = flat[at: at + t.numel()].view(t.shape)
        at += t.numel()
    return out


def make_optimizer(params: dict[str, nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(list(params.values()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_batches(model: nn.Module, params: dict[str, nn.Parameter], data, batches: list[np.ndarray],
                  opt: torch.optim.Optimizer, prox: tuple[float, State] | None = None, precision: str = "fp32",
                  loss_fn: Callable | None = None, correction: State | None = None,
                  penalty: Callable | None = None) -> float:
    """One optimizer step per batch of indices; returns the mean training loss (the task's, without prox or
    penalty). `correction` (SCAFFOLD's c - c_i) is added to every gradient before the step; `penalty(params)` to
    the objective."""
    model.train()
    loss_fn = loss_fn or default_loss()
    device = next(iter(params.values())).device
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync per step
    with lowered(model, precision):  # frozen weights cast to bf16 once, not at every batch
        for idx in batches:
            inputs, labels = data.batch(idx)
            with autocast(device, precision):
                logits = model(**inputs)
            loss = loss_fn(logits, labels)
            objective = loss
            if prox is not None and prox[0] > 0:
                mu, anchor = prox
                objective = loss + 0.5 * mu * sum(((p - anchor[k]) ** 2).sum() for k, p in params.items())
            if penalty is not None:
                objective = objective + penalty(params)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            if correction is not None:
                for k, p in params.items():
                    p.grad.add_(correction[k])
            opt.step()
            total += loss.detach()
    return float(total) / max(len(batches), 1)


def shuffled_batches(indices: np.ndarray, batch_size: int, epochs: int, rng: np.random.Generator,
                     lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Each epoch: a random order cut into batches. With `lengths` (group by length, as Hugging Face's
    LengthGroupedSampler): the order is cut into mega-batches of 50 batches, each sorted by length, so a
    batch holds examples of similar length and pads little; then the batches are shuffled."""
    out = []
    for _ in range(epochs):
        order = rng.permutation(indices)
        if lengths is not None:
            mega = 50 * batch_size
            order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")]
                                    for c in np.array_split(order, range(mega, len(order), mega))])
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        out += [batches[i] for i in rng.permutation(len(batches))] if lengths is not None else batches
    return out


def lengths_for(data, cfg: TrainConfig, rows: np.ndarray | None = None) -> np.ndarray | None:
    """The examples' lengths (valid at `rows`, default all) when batches group by length; else None."""
    return data.lengths(rows) if cfg.group_by_length and hasattr(data, "lengths") else None


def local_train(model: nn.Module, params: dict[str, nn.Parameter], start: State, data, indices: np.ndarray,
                cfg: TrainConfig, seed: int, private=None, cid: int = -1, correction: State | None = None,
                penalty: Callable | None = None) -> Update:
    """Train from `start` on this client's examples; the model's frozen weights are shared and never change.
    With `private` (fl.privacy.SampleDP), DP-SGD: Opacus' per-sample gradients, clipping and noise."""
    load_state(params, start)
    if len(indices) == 0:
        return Update(cid, read_state(params), 0)
    torch.manual_seed(seed)  # dropout inside the model
    rng = np.random.default_rng(seed)
    opt = make_optimizer(params, cfg) if private is None else private.optimizer(params, cfg, seed)
    model = model if private is None else private.module
    prox = (cfg.prox_mu, {k: v.to(params[k].device) for k, v in start.items()}) if cfg.prox_mu > 0 else None
    batches = shuffled_batches(indices, cfg.batch_size, cfg.epochs, rng, lengths_for(data, cfg, indices))
    if correction is not None:
        correction = {k: v.to(params[k].device) for k, v in correction.items() if k in params}
    loss = train_batches(model, params, data, batches, opt, prox, cfg.precision, cfg.loss, correction, penalty)
    return Update(cid, read_state(params), len(indices), loss, len(batches))
