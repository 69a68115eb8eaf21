"""The Strategy interface, in Flower's shape: `configure_train` says what each sampled client receives,
`aggregate` turns the updates that came back into the next global state, `state`/`restore` serve checkpoints and
`summary` adds the strategy's own figures to the round's row."""
from __future__ import annotations

from fedft.config import FLConfig
from fedft.fl.aggregate import State, partial_average, weighted_average
from fedft.fl.checkpoint import object_state, restore
from fedft.fl.messages import Instruction, Update
from fedft.registry import Registry

STRATEGIES: Registry[type["Strategy"]] = Registry("strategy")


class ClientSide:
    """What a strategy asks of each client during its local training (in Flower, the ClientApp's half of the
    algorithm): a correction added to every gradient, a penalty added to the local loss, and extras reported with
    the update. Default: none of them."""

    def correction(self, ins: Instruction) -> State | None:
        return None

    def penalty(self, ins: Instruction):
        """None, or a function of the trained parameters (by name) whose value is added to the local objective
        (HetLoRA's rank self-pruning: methods/lora_hetlora.py). Clients with a penalty train one by one."""
        return None

    def report(self, ins: Instruction, update: Update, lr: float) -> dict[str, State]:
        return {}


class Strategy:
    """FedAvg's shape: every sampled client starts from the global state; the data-weighted mean of the returned
    states, then `server_step`."""

    def __init__(self, cfg: FLConfig, num_clients: int = 0) -> None:
        self.cfg, self.num_clients = cfg, num_clients

    def client_side(self) -> ClientSide:
        return ClientSide()

    def configure_train(self, rnd: int, cids: list[int], start: State) -> list[Instruction]:
        """One instruction per sampled client. `start` is the global state as it travels (at comm.dtype)."""
        return [Instruction(cid, start) for cid in cids]

    def aggregate(self, rnd: int, current: State, updates: list[Update]) -> State:
        """Each parameter averaged over the updates that carry it (all of them, except under method layers, where
        a client sends only the layers it trained); a parameter no update carries keeps its current value.
        `current` is the state the clients started from."""
        weighted = [u for u in updates if u.num_examples > 0]
        if not weighted:
            return current
        if all(u.state.keys() == current.keys() for u in weighted):
            mean = weighted_average([u.state for u in weighted], [u.num_examples for u in weighted])
        else:
            mean = partial_average(current, [u.state for u in weighted], [u.num_examples for u in weighted])
        return self.server_step(current, mean)

    def server_step(self, current: State, mean: State) -> State:
        """The next global state from the current one and the clients' weighted mean."""
        return mean

    def summary(self) -> dict:
        """Fields this strategy adds to the round's row (client DP: epsilon spent)."""
        return {}

    def state(self) -> dict:
        """What a checkpoint keeps (server momentum, Adam moments, ...): every attribute but the config."""
        return object_state(self)

    def restore(self, state: dict) -> None:
        restore(self, state)
