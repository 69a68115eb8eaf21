"""The Task interface: the loss clients minimise, how the global model is scored, and how examples batch."""
from __future__ import annotations

import torch
from torch import nn

from fedft.registry import Registry

TASKS: Registry[type["Task"]] = Registry("task")


class Task:
    """One learning problem on top of the backbone. `loss` is the only place its training objective is written;
    `evaluate` returns the metrics results.json records for the global model (the first two, as "accuracy" and
    "loss" for classification, name the row's columns)."""

    name: str

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data, batch_size: int = 256, precision: str = "fp32",
                 profiles=None) -> dict[str, float]:
        """`profiles`, where the task has them (see `profiles`): also score the model as the clients they describe
        would see it ("personal_accuracy")."""
        raise NotImplementedError

    def profiles(self, train, clients: list) -> object | None:
        """What makes each client's data its own, for the personal score (classification: its label shares)."""
        return None
