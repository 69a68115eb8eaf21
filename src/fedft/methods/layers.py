"""layers: selective layer fine-tuning. Each client trains only the transformer layers chosen for it (all their
parameters, or the bias terms or LoRA inside them: method.inner), within its own budget, plus the head and
final norm; embeddings stay frozen.

The method marks every candidate trainable; `LayerSelector` decides per client and round which layers it
trains (method.select: top, bottom, random, or gradient: importance reported by the clients, masks chosen by
the server with the consistency term of fl/selection.py). Its round hook, `LayerHook`, writes each client's
selection into its instruction (the runner trains only those parameters) and the strategy averages each
parameter over the clients that trained it.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedft.errors import UsageError
from fedft.fl import selection
from fedft.fl.client import client_seed, default_loss, load_state
from fedft.fl.hooks import Hook
from fedft.fl.precision import autocast
from fedft.methods.base import METHODS, Method, freeze_all_but
from fedft.models.arch import layer_list_name, transformer_layers

INNER_LR = {"full": 5e-5, "bias": 3e-3, "lora": 3e-3}
FROZEN_STEM = ("embeddings", "pre_layrnorm")  # what comes before the layers stays frozen


@METHODS.register("layers")
class Layers(Method):
    name = "layers"
    default_lr = INNER_LR["full"]

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.default_lr = INNER_LR[cfg.inner]

    def apply(self, model):
        if self.cfg.inner == "lora":
            from fedft.methods.lora import Lora

            model = Lora(self.cfg).apply(model)
        elif self.cfg.inner == "bias":
            freeze_all_but(model, lambda n: n.startswith("head.") or n.endswith(".bias"))
        else:
            freeze_all_but(model, lambda n: True)
        for name, p in model.named_parameters():
            if any(f".{stem}" in name or name.startswith(stem) for stem in FROZEN_STEM):
                p.requires_grad_(False)
        return model

    def hooks(self, pool, num_clients: int, seed: int) -> list[Hook]:
        return [LayerHook(LayerSelector(self.cfg, pool.model, num_clients, seed), pool)]

    def export(self, model, out_dir: Path, meta: dict) -> list[str]:
        if self.cfg.inner == "lora":
            from fedft.methods.lora import Lora

            return Lora(self.cfg).export(model, out_dir, meta)
        return super().export(model, out_dir, meta)


def layer_index(model: nn.Module) -> tuple[dict[str, int | None], int]:
    """Each trainable parameter's transformer layer (None: head, final norm) and the number of layers."""
    backbone = _backbone(model)
    layers = transformer_layers(backbone)
    prefix = layer_list_name(backbone)
    pattern = re.compile(rf"(^|\.)backbone\.{re.escape(prefix)}\.(\d+)\.")
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            m = pattern.search(name)
            out[name] = int(m.group(2)) if m else None
    return out, len(layers)


def _backbone(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.backbone


class LayerSelector:
    """Which layers each client trains: budgets drawn once per client, masks (re)chosen every
    method.reselect_every rounds, and each round's selection for results.json."""

    def __init__(self, cfg, model: nn.Module, num_clients: int, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.layer_of, self.num_layers = layer_index(model)
        low, high = (cfg.budget_min, cfg.budget_max) if cfg.budget_max else (cfg.budget, cfg.budget)
        for key, value in (("method.budget_min" if cfg.budget_max else "method.budget", low),
                           ("method.budget_max" if cfg.budget_max else "method.budget", high)):
            if not 1 <= value <= self.num_layers:
                raise UsageError(f"{key} = {value}: must be between 1 and the model's {self.num_layers} layers")
        self.budget = selection.budgets(num_clients, low, high, client_seed(seed, 7))
        self.masks: dict[int, tuple[int, np.ndarray]] = {}  # client -> (round chosen, (L,) bool)
        self.consensus: list[dict] = []  # per gradient choice: the lambda at which its clients would all agree

    def choose(self, rnd: int, cids: list[int], importance) -> tuple[dict[int, list[str]], int]:
        """Every client in `cids` gets its parameters to train this round. `importance(cid)` -> (L,) scores is
        called for the clients whose mask is due (gradient strategy). Returns ({cid: names}, bytes of the
        importance reports)."""
        due = [c for c in cids if c not in self.masks or rnd - self.masks[c][0] >= self.cfg.reselect_every]
        sent = 0
        if self.cfg.select == "gradient" and due:
            g = np.zeros((len(cids), self.num_layers))
            fixed = np.zeros((len(cids), self.num_layers), dtype=bool)
            for row, c in enumerate(cids):
                if c in due:
                    g[row] = importance(c)
                    sent += 4 * self.num_layers
                else:
                    fixed[row] = self.masks[c][1]
            g = selection.normalise(g)
            masks = selection.choose(g, self.budget[cids], self.cfg.balance, fixed)
            if len(due) > 1:
                rows = [row for row, c in enumerate(cids) if c in due]
                self.consensus.append({"round": rnd, "lambda": selection.consensus_lambda(
                    g[rows], self.budget[[cids[r] for r in rows]])})
            for row, c in enumerate(cids):
                if c in due:
                    self.masks[c] = (rnd, masks[row])
        else:
            for c in due:
                rng = np.random.default_rng(client_seed(self.seed, 8, rnd, c))
                self.masks[c] = (rnd, selection.fixed_mask(self.cfg.select, self.num_layers, int(self.budget[c]), rng))
        return {c: self.names(self.masks[c][1]) for c in cids}, sent

    def names(self, mask: np.ndarray) -> list[str]:
        return [n for n, layer in self.layer_of.items() if layer is None or mask[layer]]

    def selection(self, cids: list[int]) -> dict[str, list[int]]:
        return {str(c): np.flatnonzero(self.masks[c][1]).tolist() for c in cids if c in self.masks}


def layer_importance(model: nn.Module, params: dict[str, nn.Parameter], layer_of: dict[str, int | None],
                     num_layers: int, data, idx: np.ndarray, batch_size: int, kind: str = "gn",
                     loss_fn=None, precision: str = "fp32") -> np.ndarray:
    """(L,) importance of each layer on one client's data, from one pass of gradients (no update):
    gn = sum over batches of ||grad of the layer's parameters||^2; rgn = gn / ||parameters||^2;
    snr = sum(mean_b grad)^2 / sum(std_b grad) over the layer's parameters (signal over noise across batches).
    The forward pass computes in `precision`, as training does."""
    names = [n for n, layer in layer_of.items() if layer is not None]
    was = model.training
    model.eval()  # no dropout: the same state gives the same scores
    gn = np.zeros(num_layers)
    s1 = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names} if kind == "snr" else {}
    s2 = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names} if kind == "snr" else {}
    batches = [idx[i: i + batch_size] for i in range(0, len(idx), batch_size)]
    for batch in batches:
        inputs, labels = data.batch(batch)
        with autocast(labels.device, precision):
            outputs = model(**inputs)
        loss = (loss_fn or default_loss())(outputs, labels)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is None:
                continue
            gn[layer_of[n]] += float(g.double().pow(2).sum())
            if kind == "snr":
                s1[n] += g.double()
                s2[n] += g.double().pow(2)
    model.train(was)
    if kind == "rgn":
        norm = np.zeros(num_layers)
        for n in names:
            norm[layer_of[n]] += float(params[n].detach().double().pow(2).sum())
        return gn / np.maximum(norm, 1e-12)
    if kind == "snr":
        signal, noise = np.zeros(num_layers), np.zeros(num_layers)
        nb = max(len(batches), 1)
        for n in names:
            mean = s1[n] / nb
            std = (s2[n] / nb - mean.pow(2)).clamp(min=0).sqrt()
            signal[layer_of[n]] += float(mean.pow(2).sum())
            noise[layer_of[n]] += float(std.sum())
        return signal / np.maximum(noise, 1e-12)
    return gn


def client_importance(model, params, start, layer_of, num_layers, data, idx, batch_size, kind, loss_fn=None,
                      precision="fp32"):
    """A client's importance report, computed with the global state it received."""
    load_state(params, start)
    if len(idx) == 0:
        return np.zeros(num_layers)
    return layer_importance(model, params, layer_of, num_layers, data, idx, batch_size, kind, loss_fn, precision)


class LayerHook(Hook):
    """Each returned client's layers for this round (importance reports, where asked, count as bytes sent up)."""
    order = 20  # after availability: only clients that will return report and are given layers

    def __init__(self, selector: LayerSelector, pool) -> None:
        self.selector, self.pool = selector, pool

    def configure(self, rnd, instructions, log):
        p, sel = self.pool, self.selector
        start = {i.cid: i.state for i in instructions}
        cids = [i.cid for i in instructions]
        trained, sent = sel.choose(rnd, cids, lambda cid: client_importance(
            p.model, p.params, start[cid], sel.layer_of, sel.num_layers, p.data, p.clients[cid], p.cfg.batch_size,
            sel.cfg.importance, p.cfg.loss, p.cfg.precision))
        log.bytes_up += sent
        log.fields["selection"] = sel.selection(cids)
        return [dataclasses.replace(i, train=trained[i.cid]) for i in instructions]

    def describe(self) -> dict:
        return {"layers": {"num_layers": self.selector.num_layers, "budgets": self.selector.budget.tolist(),
                           "balance": self.selector.cfg.balance, "consensus_lambda": self.selector.consensus}}

    def finish(self, out_dir: Path, rounds: list[dict]) -> None:
        from fedft.report import plot_selection

        plot_selection(out_dir / "selection.png", rounds, self.selector.num_layers,
                       f"layers ({self.selector.cfg.select}): clients per layer and round")

    def state(self) -> dict:
        return {"masks": dict(self.selector.masks), "consensus": list(self.selector.consensus)}

    def restore(self, state: dict) -> None:
        self.selector.masks = state["masks"]
        self.selector.consensus = list(state.get("consensus", []))
