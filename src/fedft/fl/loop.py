"""The three ways to train: federated rounds, each client alone (local), and all data pooled (central).

Each is a generator that yields one Row per round, so the caller can print and save as it goes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedft.config import FLConfig
from fedft.fl import comm
from fedft.fl.batched import train_batched
from fedft.fl.checkpoint import object_state, restore
from fedft.fl.validate import attack, norm_outliers, problem, update_norm
from fedft.fl.client import (State, TrainConfig, Update, client_seed, lengths_for, load_state, local_train,
                             make_optimizer, read_state, shuffled_batches, train_batches)
from fedft.fl.availability import client_fates
from fedft.fl.evaluate import evaluate
from fedft.fl.privacy import ClientDP, SampleDP
from fedft.fl.strategies import Strategy
from fedft.methods.layers import LayerSelector, client_importance
from fedft.proxy import ProxyRun


@dataclass
class Row:
    round: int
    accuracy: float | None  # None on rounds without evaluation
    loss: float | None
    train_loss: float
    bytes_up: int
    bytes_down: int
    clients: list[int]  # sampled client ids
    seconds: float
    sampled: int = 0
    returned: int = 0  # updates that arrived
    dropped: int = 0  # sampled clients that failed (fl.dropout)
    late: int = 0  # stragglers past fl.deadline
    aggregated: bool = True  # False: fewer than fl.min_clients returned, the global model was kept
    epsilon: float | None = None  # client-level DP: spent so far
    dp: dict | None = None  # client-level DP: clip, noise std, how many updates were clipped
    proxy_accuracy: float | None = None  # proxy runs (FedPFT/FedOT): the sub-model's own test accuracy; `accuracy`
    proxy_loss: float | None = None  # is the full model's, with the aggregated parameters plugged in
    selection: dict[str, list[int]] | None = None  # method layers: the layers each returned client trained
    rejected: list[dict] | None = None  # updates the server refused before aggregation: {"client", "why"}


@dataclass
class Setup:
    """Everything a loop needs: the one shared model, its trainable parameters, the data and the settings."""
    model: nn.Module
    params: dict[str, nn.Parameter]
    train: object  # examples with .batch(idx) and len()
    test: object
    clients: list[np.ndarray]  # each client's indices into `train`
    fl: FLConfig
    lr: float
    comm_dtype: str
    strategy: Strategy
    tick: Callable[[], None] = field(default=lambda: None)  # called after each client's local training
    dp: ClientDP | None = None  # client-level differential privacy on the aggregate
    sample_dp: SampleDP | None = None  # sample-level differential privacy inside each client
    parallel_clients: int = 1  # clients trained at once (cross-client batching); 1 = one after another
    precision: str = "fp32"  # "bf16": autocast forward passes
    proxy: ProxyRun | None = None  # clients train a sub-model; evaluation plugs their parameters into the full one
    selector: LayerSelector | None = None  # method layers: which layers each client trains
    # clients that train elsewhere (fedft.deploy: SuperNodes over Flower): (starts, cids, round) -> their Updates
    remote: Callable[[list[State], list[int], int], list[Update]] | None = None
    malicious: set[int] = field(default_factory=set)  # simulation: clients that send corrupted updates
    resume: dict | None = None  # a checkpoint to continue from (fedft run --resume)
    progress: dict | None = None  # after each round: what a checkpoint of it holds

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and loss of the global model (with a proxy: of the full model it is plugged into)."""
        if self.proxy is not None:
            self.proxy.plug(self.params)
            return evaluate(self.proxy.full, self.proxy.test, precision=self.precision)
        return evaluate(self.model, self.test, precision=self.precision)

    def evaluate_proxy(self) -> tuple[float | None, float | None]:
        """The sub-model's own test accuracy and loss (None without a proxy)."""
        return evaluate(self.model, self.test, precision=self.precision) if self.proxy is not None else (None, None)

    def train_config(self) -> TrainConfig:
        return TrainConfig(self.fl.local_epochs, self.fl.batch_size, self.lr, self.fl.weight_decay,
                           self.strategy.prox_mu(), self.fl.group_by_length, self.precision)

    def eval_round(self, rnd: int) -> bool:
        return rnd % self.fl.eval_every == 0 or rnd == self.fl.rounds

    def train_clients(self, starts: list[State], cids: list[int], rnd: int,
                      trained: dict[int, list[str]] | None = None) -> list[Update]:
        """Local training of clients `cids` from `starts`: one after another, or parallel_clients at a time
        batched (the same updates up to float rounding). With `trained` (method layers), each client trains and
        sends only the parameters named for it."""
        if self.remote is not None:
            updates = self.remote(starts, cids, rnd)
            for _ in cids:
                self.tick()
            return updates
        cfg, k, updates = self.train_config(), max(self.parallel_clients, 1), []
        if trained is not None:
            for start, cid in zip(starts, cids):
                updates.append(self._train_subset(start, cid, rnd, trained[cid], cfg))
                self.tick()
            return updates
        if self.sample_dp is not None:  # DP-SGD: one client at a time, each accounted for its own steps
            for start, cid in zip(starts, cids):
                idx = self.clients[cid]
                updates.append(local_train(self.model, self.params, start, self.train, idx, cfg,
                                           client_seed(self.fl.seed, rnd, cid), private=self.sample_dp))
                if len(idx):
                    self.sample_dp.record(cid, updates[-1].metrics["steps"], min(1.0, cfg.batch_size / len(idx)))
                self.tick()
            return updates
        i = 0
        while i < len(cids):
            chunk, seeds = cids[i: i + k], [client_seed(self.fl.seed, rnd, c) for c in cids[i: i + k]]
            if k == 1:
                updates.append(local_train(self.model, self.params, starts[i], self.train, self.clients[chunk[0]],
                                           cfg, seeds[0]))
            else:
                try:
                    updates += train_batched(self.model, self.params, starts[i: i + k], self.train,
                                             [self.clients[c] for c in chunk], cfg, seeds)
                except torch.OutOfMemoryError:  # too many at once for the device: halve and redo this chunk
                    torch.cuda.empty_cache()
                    k = self.parallel_clients = k // 2
                    continue
            for _ in chunk:
                self.tick()
            i += len(chunk)
        return updates


    def _train_subset(self, start: State, cid: int, rnd: int, names: list[str], cfg: TrainConfig) -> Update:
        """One client training only `names` (the rest frozen at the global state, so backward stops early)."""
        load_state(self.params, start)
        keep = set(names)
        for name, p in self.params.items():
            p.requires_grad_(name in keep)
        try:
            return local_train(self.model, {n: self.params[n] for n in names}, {n: start[n] for n in names},
                               self.train, self.clients[cid], cfg, client_seed(self.fl.seed, rnd, cid))
        finally:
            for p in self.params.values():
                p.requires_grad_(True)

    def importance(self, start: State, cid: int) -> np.ndarray:
        """Method layers, gradient strategy: one client's per-layer importance under the global state."""
        sel = self.selector
        return client_importance(self.model, self.params, start, sel.layer_of, sel.num_layers, self.train,
                                 self.clients[cid], self.fl.batch_size, sel.cfg.importance)


def federated(s: Setup) -> Iterator[Row]:
    """Sample clients -> send the global trainable state -> local training on the clients that return ->
    aggregate (with DP if set) -> (proxy runs: align the sub-model) -> evaluate."""
    sampler = np.random.default_rng(client_seed(s.fl.seed, 1))
    global_state = read_state(s.params)
    releases, first = 0, 1
    if s.resume is not None:  # continue after the checkpoint's round, with every generator where it was
        sampler.bit_generator.state = s.resume["sampler"]
        global_state, releases, first = s.resume["global"], s.resume["releases"], s.resume["round"] + 1
        load_state(s.params, global_state)
        restore(s.strategy, s.resume["strategy"])
        restore(s.dp, s.resume["dp"])
        if s.selector is not None:  # method layers: each client's mask and the round it was chosen
            s.selector.masks = s.resume["masks"]
        if s.sample_dp is not None:  # sample-level DP: each client's accountant history
            s.sample_dp.history = s.resume["sample_dp"]
        if s.proxy is not None:  # FedPFT: the sub-model's re-aligned FFNs and who has them
            s.proxy.restore(s.resume["proxy"])
    for rnd in range(first, s.fl.rounds + 1):
        t0 = time.perf_counter()
        sampled = sorted(sampler.choice(len(s.clients), s.fl.clients_per_round, replace=False).tolist())
        down = comm.encode(global_state, s.comm_dtype)
        start = comm.decode(down)  # what every sampled client receives
        bytes_down = len(down) * len(sampled) + (s.proxy.owed(sampled) if s.proxy else 0)  # + re-aligned FFNs
        fates = client_fates(s.fl, rnd, sampled, [len(c) for c in s.clients])  # who will not return: not trained
        for _ in fates.failed + fates.late:
            s.tick()
        trained, bytes_up = None, 0
        if s.selector is not None:  # method layers: each client's layers (importance reports count as sent)
            trained, bytes_up = s.selector.choose(rnd, fates.returned, lambda cid: s.importance(start, cid))
        updates = s.train_clients([start] * len(fates.returned), fates.returned, rnd, trained)
        senders = fates.returned if len(updates) == len(fates.returned) else \
            [u.metrics.get("client", -1) for u in updates]
        for cid, update in zip(senders, updates):
            if cid in s.malicious:  # simulation: this client corrupts what it sends
                update.state = attack(s.fl.attack, s.fl.attack_scale, start, update.state,
                                      client_seed(s.fl.seed, rnd, cid, 9))
            up = comm.encode(update.state, s.comm_dtype)
            bytes_up += len(up)
            update.state = comm.decode(up)  # the server sees exactly what was sent
        rejected = [{"client": int(c), "why": why} for c, u in zip(senders, updates)
                    if (why := problem(u.state, start, s.fl.max_update_norm))]
        if s.fl.max_norm_ratio:  # far out of line with the round's other (valid) updates
            kept = [(c, u) for c, u in zip(senders, updates) if c not in {r["client"] for r in rejected}]
            norms = [update_norm(u.state, start) for _, u in kept]
            rejected += [{"client": int(c), "why": why}
                         for (c, _), why in zip(kept, norm_outliers(norms, s.fl.max_norm_ratio)) if why]
        bad = {r["client"] for r in rejected}
        fates_returned = [c for c in senders if c not in bad]
        updates = [u for c, u in zip(senders, updates) if c not in bad]
        stats = None
        if s.proxy is not None and s.proxy.due(rnd) and updates:  # clients report their sub-FFNs' activity
            stats = s.proxy.gather(s.model, s.params, updates, [s.clients[c] for c in fates_returned], s.train,
                                   s.fl.batch_size)
            bytes_up += stats.nbytes() * len(updates)
        aggregated, dp_info = len(updates) >= s.fl.min_clients, None
        if aggregated and s.dp is not None:
            mean, dp_info = s.dp.private_mean(start, [u.state for u in updates])
            global_state = s.strategy.server_step(start, mean)
            releases += 1
        elif aggregated:
            global_state = s.strategy.aggregate(start, updates)  # against what the clients started from
        load_state(s.params, global_state)
        if stats is not None and aggregated:  # neuron-level alignment against the full model (with the new global plugged in)
            s.proxy.plug(s.params)
            s.proxy.align(stats, rnd)
        acc, loss = s.evaluate() if s.eval_round(rnd) else (None, None)
        sub_acc, sub_loss = s.evaluate_proxy() if s.eval_round(rnd) else (None, None)
        s.progress = {"round": rnd, "global": global_state, "sampler": sampler.bit_generator.state,
                      "releases": releases, "strategy": object_state(s.strategy), "dp": object_state(s.dp),
                      "masks": dict(s.selector.masks) if s.selector else None,
                      "sample_dp": {c: list(h) for c, h in s.sample_dp.history.items()} if s.sample_dp else None,
                      "proxy": s.proxy.state() if s.proxy else None}
        yield Row(rnd, acc, loss, _mean_loss(updates), bytes_up, bytes_down, sampled,
                  time.perf_counter() - t0, len(sampled), len(updates), len(fates.failed), len(fates.late),
                  aggregated, s.dp.epsilon(releases) if s.dp else s.sample_dp.epsilon() if s.sample_dp else None,
                  dp_info, sub_acc, sub_loss, s.selector.selection(fates.returned) if s.selector else None,
                  rejected or None)


def local_only(s: Setup) -> Iterator[Row]:
    """Every client trains alone from the same start, round after round, with no communication.
    Accuracy is the mean over the clients' own models on the shared test set."""
    start = read_state(s.params)
    states = [start] * len(s.clients)
    for rnd in range(1, s.fl.rounds + 1):
        t0 = time.perf_counter()
        updates = s.train_clients(states, list(range(len(s.clients))), rnd)
        states = [u.state for u in updates]
        scores = []
        for state in states if s.eval_round(rnd) else []:
            load_state(s.params, state)
            scores.append(s.evaluate())
        acc, loss = (float(np.mean([a for a, _ in scores])), float(np.mean([l for _, l in scores]))) \
            if scores else (None, None)
        yield Row(rnd, acc, loss, _mean_loss(updates), 0, 0, list(range(len(s.clients))),
                  time.perf_counter() - t0, len(s.clients), len(s.clients))


def central(s: Setup) -> Iterator[Row]:
    """All client data pooled, one optimizer, the same number of example-passes per round as a federated
    round makes on average (clients_per_round / num_clients of the pooled data, local_epochs times)."""
    pooled = np.concatenate(s.clients)
    per_round = max(1, round(len(pooled) * s.fl.clients_per_round / len(s.clients)))
    rng = np.random.default_rng(client_seed(s.fl.seed, 2))
    torch.manual_seed(client_seed(s.fl.seed, 3))
    opt = make_optimizer(s.params, s.train_config())
    for rnd in range(1, s.fl.rounds + 1):
        t0 = time.perf_counter()
        subset = rng.choice(pooled, per_round, replace=False)
        loss = train_batches(s.model, s.params, s.train,
                             shuffled_batches(subset, s.fl.batch_size, s.fl.local_epochs, rng,
                                              lengths_for(s.train, s.train_config())), opt, precision=s.precision)
        s.tick()
        acc, eloss = s.evaluate() if s.eval_round(rnd) else (None, None)
        yield Row(rnd, acc, eloss, loss, 0, 0, [], time.perf_counter() - t0)


MODES = {"federated": federated, "local": local_only, "central": central}


def _mean_loss(updates) -> float:
    losses = [u.metrics["loss"] for u in updates if u.num_examples > 0]
    return float(np.mean(losses)) if losses else float("nan")
