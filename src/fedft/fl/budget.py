"""comm.budget_mb: an upload budget for the whole run, as the FlowerTune leaderboard rules one. After each round the
server adds up what the clients uploaded; when the next round's uploads (the last round's per client, times
fl.clients_per_round) would pass the budget, the run ends cleanly after this round: it is scored, results.json says
"completed" and its "stopped" entry gives the round and the reason.
"""
from __future__ import annotations

from fedft.errors import UsageError
from fedft.fl import comm
from fedft.fl.hooks import Hook
from fedft.fl.parts import part

MB = 1e6


class UploadBudget(Hook):
    order = 90  # after every hook that changes what arrives

    def __init__(self, budget_mb: float, per_client: int, clients_per_round: int, rounds: int) -> None:
        self.budget, self.per_client, self.k, self.rounds = budget_mb * MB, per_client, clients_per_round, rounds
        self.spent, self.stopped = 0, None

    def aggregated(self, rnd, state, updates, aggregated, log):
        self.spent += log.bytes_up
        if updates:
            self.per_client = log.bytes_up / len(updates)
        upcoming = self.per_client * self.k
        if rnd < self.rounds and self.spent + upcoming > self.budget:
            log.stop = (f"comm.budget_mb = {self.budget / MB:g}: {self.spent / MB:.2f} MB uploaded after round {rnd}; "
                        f"round {rnd + 1} would upload up to {upcoming / MB:.2f} MB more")
            self.stopped = {"after_round": rnd, "reason": log.stop}

    def describe(self) -> dict:
        return {"upload_budget": {"budget_mb": self.budget / MB, "uploaded_mb": self.spent / MB,
                                  "stopped": self.stopped}}

    def state(self) -> dict:
        return {"spent": self.spent, "per_client": self.per_client, "stopped": self.stopped}

    def restore(self, state: dict) -> None:
        self.spent, self.per_client, self.stopped = state["spent"], state["per_client"], state["stopped"]


@part(60)
def upload_budget(b) -> None:
    cfg = b.exp.config
    if not cfg.comm.budget_mb:
        return
    if cfg.fl.mode != "federated":
        raise UsageError(f"comm.budget_mb counts the clients' uploads; fl.mode = {cfg.fl.mode!r} sends none")
    per_client = len(comm.encode({k: p.detach() for k, p in b.exp.params.items()}, cfg.comm.dtype))
    first = per_client * cfg.fl.clients_per_round
    if first > cfg.comm.budget_mb * MB:
        raise UsageError(f"comm.budget_mb = {cfg.comm.budget_mb:g}: less than one round's uploads "
                         f"({first / MB:.2f} MB: {cfg.fl.clients_per_round} clients x {per_client / MB:.3f} MB)")
    b.fed.hooks.append(UploadBudget(cfg.comm.budget_mb, per_client, cfg.fl.clients_per_round, cfg.fl.rounds))
