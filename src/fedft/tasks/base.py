"""The Task interface: the loss clients minimise, how the global model is scored, and how examples batch."""
from __future__ import annotations

import torch
from torch import nn

from fedft.registry import Registry

TASKS: Registry[type["Task"]] = Registry("task")


class Task:
    """One learning problem on top of the backbone. `build` puts what the task needs on the backbone (a head, or
    nothing), `examples` turns a raw split into batches, `loss` is the only place its training objective is
    written, and `evaluate` returns the metrics results.json records for the global model ("loss" always; the
    classify task's "accuracy"; others add their own, which the rows carry as they are)."""

    name: str
    raw: tuple[type, ...] = ()  # the raw split types (fedft.data) this task learns from: task.name = auto picks by it

    def check(self, config, backbone) -> None:
        """Refuse, in one line naming the task, what cannot apply to it (a method, a model, a feature)."""

    def build(self, config, backbone, classes: list[str]) -> nn.Module:
        """The module the method is applied to, around `backbone.model`."""
        raise NotImplementedError

    def examples(self, raw, backbone, config):
        """A raw split -> what the model eats: an object with .batch(idx) -> (inputs, targets) and len()."""
        raise NotImplementedError

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


def task_for(config, raw) -> Task:
    """The task of a run: task.name, or (auto) the one whose raw split type the data has."""
    from fedft.errors import UsageError

    if config.task.name != "auto":
        task = TASKS.get(config.task.name, "task.name")()
        if task.raw and not isinstance(raw, task.raw):
            raise UsageError(f"task.name = {config.task.name!r}: data.name = {config.data.name!r} does not hold "
                             f"{task.name} data; use task.name = 'auto'")
        return task
    for name in TASKS.names():
        task = TASKS.get(name, "task.name")()
        if task.raw and isinstance(raw, task.raw):
            return task
    raise UsageError(f"data.name = {config.data.name!r}: no task learns from {type(raw).__name__} data")
