"""Which sampled clients return their update: dropout (a client fails) and stragglers (a slow client
misses the round's deadline), drawn per round from the run's seed. Time is simulated, never slept: a
client needs one unit per local step, a straggler `straggler_slowdown` units."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedft.config import FLConfig
from fedft.fl.client import client_seed


@dataclass
class Fates:
    returned: list[int]  # client ids whose update arrives, in sampled order
    failed: list[int]  # dropped out (fl.dropout)
    late: list[int]  # stragglers past fl.deadline


def client_sampler(fl: FLConfig) -> np.random.Generator:
    """The generator the federated loop samples each round's clients with (its state is checkpointed)."""
    return np.random.default_rng(client_seed(fl.seed, 1))


def sample_clients(sampler: np.random.Generator, fl: FLConfig, num_clients: int) -> list[int]:
    """One round's sampled clients, in id order."""
    return sorted(sampler.choice(num_clients, fl.clients_per_round, replace=False).tolist())


def participation(fl: FLConfig, sizes: list[int]) -> list[int]:
    """How many rounds each client will train in this run: sampled and returning, drawn exactly as the loop
    draws them (the same seeded sampler and fates). Known before the run, so privacy noise can be sized for it."""
    sampler, count = client_sampler(fl), [0] * len(sizes)
    for rnd in range(1, fl.rounds + 1):
        for cid in client_fates(fl, rnd, sample_clients(sampler, fl, len(sizes)), sizes).returned:
            count[cid] += 1
    return count


def local_steps(num_examples: int, fl: FLConfig) -> int:
    return -(-num_examples // fl.batch_size) * fl.local_epochs


def client_fates(fl: FLConfig, rnd: int, sampled: list[int], sizes: list[int]) -> Fates:
    """Seeded per (run seed, round): the same clients fail and straggle on every rerun."""
    rng = np.random.default_rng(client_seed(fl.seed, 5, rnd))
    fails = rng.random(len(sampled)) < fl.dropout
    slow = rng.random(len(sampled)) < fl.stragglers
    returned, failed, late = [], [], []
    for cid, f, s in zip(sampled, fails, slow):
        time = local_steps(sizes[cid], fl) * (fl.straggler_slowdown if s else 1.0)
        if f:
            failed.append(cid)
        elif fl.deadline > 0 and time > fl.deadline:
            late.append(cid)
        else:
            returned.append(cid)
    return Fates(returned, failed, late)
