"""What travels between the server and a client in one round, as typed messages (after Flower's Message).

Down: an `Instruction` per sampled client: the state it starts from, which parameters it trains, and extras the
strategy sends (tensors, counted in bytes). Up: an `Update`: the trained state, how many examples and local steps it
took, its training loss, and extras it reports (tensors, counted in bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

State = dict[str, torch.Tensor]


@dataclass
class Instruction:
    cid: int
    state: State  # the trainable state the client starts from
    train: list[str] | None = None  # the parameters it trains and sends (None: all of them)
    prox_mu: float = 0.0  # FedProx: weight of mu/2 * ||w - state||^2 in its local objective
    extras: dict[str, State] = field(default_factory=dict)  # sent with the state (e.g. SCAFFOLD's server control)
    held: dict[str, State] = field(default_factory=dict)  # what this client kept from earlier rounds (never sent)


@dataclass
class Update:
    cid: int
    state: State  # the trained parameters (those it trained, under a partial Instruction.train)
    num_examples: int
    loss: float = float("nan")  # mean training loss over its local steps (NaN: no data)
    steps: int = 0  # local optimizer steps taken
    extras: dict[str, State] = field(default_factory=dict)  # reported with the state (counted in bytes)
