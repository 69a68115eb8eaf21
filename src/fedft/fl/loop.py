"""The three ways to train: federated rounds, each client alone (local), and all data pooled (central).

Each is a generator that yields one Row per round, so the caller can print and save as it goes. The federated loop
knows only its parts: a strategy (what clients receive, how updates combine), a runner (how clients train), hooks
(what features do at fixed points of a round) and an evaluation of the global model.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedft.config import FLConfig
from fedft.fl.availability import client_sampler, sample_clients
from fedft.fl.channel import Channel
from fedft.fl.client import client_seed, lengths_for, load_state, make_optimizer, read_state, shuffled_batches, \
    train_batches
from fedft.fl.hooks import Hook, RoundLog, hook_key
from fedft.fl.messages import Update
from fedft.fl.runners import Runner
from fedft.fl.strategies import Strategy


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
    returned: int = 0  # updates aggregated (that arrived and were not rejected)
    dropped: int = 0  # sampled clients that failed (fl.dropout)
    late: int = 0  # stragglers past fl.deadline
    aggregated: bool = True  # False: fewer than fl.min_clients returned, the global model was kept
    epsilon: float | None = None  # DP: spent so far
    dp: dict | None = None  # client-level DP: clip, noise std, how many updates were clipped
    proxy_accuracy: float | None = None  # proxy runs (FedPFT/FedOT): the sub-model's own test accuracy; `accuracy`
    proxy_loss: float | None = None  # is the full model's, with the aggregated parameters plugged in
    selection: dict[str, list[int]] | None = None  # method layers: the layers each returned client trained
    rejected: list[dict] | None = None  # updates the server refused before aggregation: {"client", "why"}
    personal_accuracy: float | None = None  # mean over clients of the accuracy on their own label distribution
    client_accuracy: float | None = None  # data.client_test_fraction: mean over clients of the accuracy on their
    client_accuracy_std: float | None = None  # own held-out rows (federated/central: the one model), and its spread
    extra: dict = field(default_factory=dict)  # what other features add (hetlora: pruned), flat in the written row


def _split(fields: dict) -> dict:
    """A hook's row fields: those Row names as they are, the rest under `extra`."""
    known = {f.name for f in dataclasses.fields(Row)}
    out = {k: v for k, v in fields.items() if k in known}
    rest = {k: v for k, v in fields.items() if k not in known}
    return {**out, "extra": rest} if rest else out


@dataclass
class Federation:
    """A federated run's parts. `evaluate()` scores the global model (the params as loaded) as row fields;
    `evaluate(cid)` scores it as client cid sees it (its personal score, local mode)."""
    params: dict[str, nn.Parameter]  # the trainable parameters of the shared model: the global state lives here
    num_clients: int
    fl: FLConfig
    strategy: Strategy
    runner: Runner
    channel: Channel
    evaluate: Callable[..., dict]
    hooks: list[Hook] = field(default_factory=list)
    tick: Callable[[], None] = field(default=lambda: None)  # a sampled client that will not return
    resume: dict | None = None  # a checkpoint to continue from (fedft run --resume)
    progress: dict | None = None  # after each round: what a checkpoint of it holds

    def parts(self) -> dict:
        """Everything with checkpoint state, by a stable name."""
        channel = {"channel": self.channel} if self.channel.error_feedback else {}  # clients' quantisation memory
        return {"strategy": self.strategy, "runner": self.runner, **channel,
                **{hook_key(type(h)): h for h in self.hooks}}

    def eval_round(self, rnd: int) -> bool:
        return rnd % self.fl.eval_every == 0 or rnd == self.fl.rounds


def federated(f: Federation) -> Iterator[Row]:
    """Sample clients -> the strategy's instructions, through the wire -> hooks configure -> the runner trains ->
    hooks see what is sent and received -> the strategy aggregates (if enough returned) -> hooks -> evaluate."""
    fl = f.fl
    sampler = client_sampler(fl)
    global_state, first = read_state(f.params), 1
    if f.resume is not None:  # continue after the checkpoint's round, with every generator where it was
        sampler.bit_generator.state = f.resume["sampler"]
        global_state, first = f.resume["global"], f.resume["round"] + 1
        load_state(f.params, global_state)
        for name, part in f.parts().items():
            part.restore(f.resume["parts"][name])
    for rnd in range(first, fl.rounds + 1):
        t0, log = time.perf_counter(), RoundLog()
        sampled = sample_clients(sampler, fl, f.num_clients)
        start = f.channel.trip(global_state)  # what every sampled client receives
        instructions, log.bytes_down = f.channel.down(f.strategy.configure_train(rnd, sampled, start))
        for hook in f.hooks:
            instructions = hook.configure(rnd, instructions, log)
        for _ in range(len(sampled) - len(instructions)):
            f.tick()
        updates = f.runner.train(rnd, instructions)
        for hook in f.hooks:
            updates = hook.sent(rnd, instructions, updates, log)
        updates, sent = f.channel.up(updates)
        log.bytes_up += sent
        for hook in f.hooks:
            updates = hook.received(rnd, instructions, updates, log)
        aggregated = len(updates) >= fl.min_clients
        if aggregated:
            global_state = f.strategy.aggregate(rnd, start, updates)  # against what the clients started from
        load_state(f.params, global_state)
        for hook in f.hooks:
            hook.aggregated(rnd, global_state, updates, aggregated, log)
        scores = f.evaluate() if f.eval_round(rnd) or log.stop else {"accuracy": None, "loss": None}
        f.progress = {"round": rnd, "global": global_state, "sampler": sampler.bit_generator.state,
                      "parts": {name: part.state() for name, part in f.parts().items()}}
        yield Row(round=rnd, train_loss=mean_loss(updates), bytes_up=log.bytes_up, bytes_down=log.bytes_down,
                  clients=sampled, seconds=time.perf_counter() - t0,
                  sampled=len(sampled), returned=len(updates), aggregated=aggregated,
                  **_split({**scores, **log.fields}), **f.strategy.summary(), **f.runner.summary())
        if log.stop:  # a hook ended the run (its reason is in results.json through the hook's describe())
            return


def local_only(f: Federation) -> Iterator[Row]:
    """Every client trains alone from the same start, round after round, with no communication.
    Accuracy is the mean over the clients' own models on the shared test set; personal accuracy the mean over
    them of each one's accuracy on its own label distribution (where a client with few labels can score high).
    With fl.client_state_mb, the clients' models are kept under that cap (the rest on disk) and a round trains and
    scores fl.clients_per_round clients at a time, so only those hold a fresh model at once."""
    from fedft.fl.client_state import ClientStates

    start = read_state(f.params)
    cids = list(range(f.num_clients))
    states = ClientStates(f.fl.client_state_mb)  # each client's own model, once it has trained
    step = f.fl.clients_per_round if f.fl.client_state_mb else len(cids)
    for rnd in range(1, f.fl.rounds + 1):
        t0 = time.perf_counter()
        updates, scores = [], []
        for at in range(0, len(cids), step):
            instructions = [dataclasses.replace(i, state=states.get(i.cid, start))
                            for i in f.strategy.configure_train(rnd, cids[at: at + step], start)]
            trained = f.runner.train(rnd, instructions)
            for u in trained:
                states[u.cid] = u.state
                if f.eval_round(rnd):
                    load_state(f.params, u.state)
                    scores.append(f.evaluate(u.cid))
            updates += [dataclasses.replace(u, state={}) for u in trained]  # their losses and sizes only
        keys = ["accuracy", "loss", "personal_accuracy", "client_accuracy"]
        keys += [k for k in (scores[0] if scores else {}) if k not in keys and k != "client_accuracy_std"]
        mean = {k: _mean([s.get(k) for s in scores]) for k in keys}  # a task's own metrics too (instruct)
        own = [s["client_accuracy"] for s in scores if s.get("client_accuracy") is not None]
        rest = {k: v for k, v in mean.items() if k not in ("accuracy", "loss")}
        yield Row(rnd, mean["accuracy"], mean["loss"], mean_loss(updates), 0, 0, cids, time.perf_counter() - t0,
                  f.num_clients, f.num_clients, client_accuracy_std=float(np.std(own)) if own else None,
                  **_split(rest))


def central(f: Federation) -> Iterator[Row]:
    """All client data pooled, one optimizer. fl.central_budget = examples: each round makes as many example-passes
    as a federated round does on average (clients_per_round / num_clients of the pooled data, local_epochs times);
    steps: as many optimizer steps as one client of mean size makes in a round (1 / num_clients of the pooled
    data, local_epochs times, at the same batch size)."""
    pool, fl = f.runner.pool, f.fl
    pooled = pool.clients.flat if hasattr(pool.clients, "flat") else np.concatenate(pool.clients)  # client order
    share = fl.clients_per_round if fl.central_budget == "examples" else 1
    per_round = max(1, round(len(pooled) * share / len(pool.clients)))
    rng = np.random.default_rng(client_seed(fl.seed, 2))
    torch.manual_seed(client_seed(fl.seed, 3))
    opt = make_optimizer(pool.params, pool.cfg)
    for rnd in range(1, fl.rounds + 1):
        t0 = time.perf_counter()
        subset = rng.choice(pooled, per_round, replace=False)
        loss = train_batches(pool.model, pool.params, pool.data,
                             shuffled_batches(subset, fl.batch_size, fl.local_epochs, rng,
                                              lengths_for(pool.data, pool.cfg, subset)), opt, precision=pool.cfg.precision,
                             loss_fn=pool.cfg.loss)
        pool.tick()
        scores = f.evaluate() if f.eval_round(rnd) else {"accuracy": None, "loss": None}
        rest = {k: v for k, v in scores.items() if k not in ("accuracy", "loss")}
        yield Row(rnd, scores["accuracy"], scores["loss"], loss, 0, 0, [], time.perf_counter() - t0,
                  **_split(rest))


MODES = {"federated": federated, "local": local_only, "central": central}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def mean_loss(updates: list[Update]) -> float:
    losses = [u.loss for u in updates if u.num_examples > 0]
    return float(np.mean(losses)) if losses else float("nan")
