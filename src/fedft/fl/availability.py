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
