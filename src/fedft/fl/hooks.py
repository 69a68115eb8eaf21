"""Round hooks: what a feature does at fixed points of a round, so the loop never asks which features are on.

In the order of a round: `configure` (after the strategy: who will return, what each client trains), `sent` (on the
clients, before the upload: simulated attacks), `received` (on the server, after decoding: update validation),
`aggregated` (after the new global state is loaded: FedPFT's alignment). Each hook writes what it costs in bytes
and what it adds to the round's row into the `RoundLog`, and keeps its own checkpoint state. Availability,
attacks and validation live here; method layers and FedPFT bring their own (methods/layers.py, proxy/hook.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fedft.config import FLConfig
from fedft.fl.availability import client_fates
from fedft.fl.client import client_seed
from fedft.fl.messages import Instruction, State, Update
from fedft.fl.validate import attack, malicious_clients, norm_outliers, problem, update_norm


@dataclass
class RoundLog:
    """What hooks add to a round: bytes beyond the states themselves, and fields of the round's row."""
    bytes_up: int = 0
    bytes_down: int = 0
    fields: dict = field(default_factory=dict)
    stop: str = ""  # a hook ends the run after this round (scored), saying why (comm.budget_mb)


class Hook:
    order = 50  # hooks run in this order at each point (lower first)

    def configure(self, rnd: int, instructions: list[Instruction], log: RoundLog) -> list[Instruction]:
        return instructions

    def sent(self, rnd: int, instructions: list[Instruction], updates: list[Update], log: RoundLog) -> list[Update]:
        return updates

    def received(self, rnd: int, instructions: list[Instruction], updates: list[Update], log: RoundLog
                 ) -> list[Update]:
        return updates

    def aggregated(self, rnd: int, state: State, updates: list[Update], aggregated: bool, log: RoundLog) -> None:
        pass

    def describe(self) -> dict:
        """Top-level entries this feature adds to results.json (read after every round)."""
        return {}

    def written(self, out_dir, row: dict) -> None:
        """After a round's row is written to results.json (as written there): trackers log it."""

    def finish(self, out_dir, rounds: list[dict]) -> dict | None:
        """After the last round: write this feature's own files (plots) into the run folder; return entries for
        results.json's "final" (or None)."""

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


class Availability(Hook):
    """Which sampled clients return: dropout and stragglers past the deadline (fl/availability.py). Those that
    will not return are not trained (but were sent the state)."""
    order = 10

    def __init__(self, fl: FLConfig, sizes: list[int]) -> None:
        self.fl, self.sizes = fl, sizes

    def configure(self, rnd, instructions, log):
        fates = client_fates(self.fl, rnd, [i.cid for i in instructions], self.sizes)
        log.fields.update(dropped=len(fates.failed), late=len(fates.late))
        back = set(fates.returned)
        return [i for i in instructions if i.cid in back]


class Attack(Hook):
    """Simulation: a fixed, seeded set of clients (fl.malicious_fraction) corrupt what they send (fl.attack)."""

    def __init__(self, fl: FLConfig, num_clients: int) -> None:
        self.fl = fl
        self.malicious = malicious_clients(num_clients, fl.malicious_fraction, fl.seed)

    def sent(self, rnd, instructions, updates, log):
        start = {i.cid: i.state for i in instructions}
        for u in updates:
            if u.cid in self.malicious:
                u.state = attack(self.fl.attack, self.fl.attack_scale, start[u.cid], u.state,
                                 client_seed(self.fl.seed, rnd, u.cid, 9))
        return updates


class Validation(Hook):
    """The server refuses updates that are malformed (unknown keys, wrong shape, NaN/Inf), above
    fl.max_update_norm, or far out of line with the round's others (fl.max_norm_ratio x their median norm)."""

    def __init__(self, fl: FLConfig) -> None:
        self.fl = fl

    def received(self, rnd, instructions, updates, log):
        start = {i.cid: i.state for i in instructions}
        rejected = [{"client": int(u.cid), "why": why} for u in updates
                    if (why := problem(u.state, start[u.cid], self.fl.max_update_norm))]
        if self.fl.max_norm_ratio:
            kept = [u for u in updates if u.cid not in {r["client"] for r in rejected}]
            norms = [update_norm(u.state, start[u.cid]) for u in kept]
            rejected += [{"client": int(u.cid), "why": why}
                         for u, why in zip(kept, norm_outliers(norms, self.fl.max_norm_ratio)) if why]
        log.fields["rejected"] = rejected or None
        bad = {r["client"] for r in rejected}
        return [u for u in updates if u.cid not in bad]


def hook_key(kind: type) -> str:
    """A hook's name among a checkpoint's parts (a run has one hook of each type)."""
    return f"hook:{kind.__name__}"
