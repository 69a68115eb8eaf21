"""Run parts: what a config switches on (a runner, a strategy wrapper, hooks, a feature cache), each installed into
the run by one registered function in its feature's own file. The run driver calls every part in order; a part
whose setting is off does nothing. So no driver code asks which features a run has."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

PARTS: list[tuple[int, str, Callable[["Build"], None]]] = []


def part(order: int):
    """Register `install(build)`; parts run in `order` (lower first), then by name."""
    def add(fn):
        name = f"{fn.__module__}.{fn.__name__}"
        if any(n == name for _, n, _ in PARTS):
            raise ValueError(f"run part {name} registered twice")
        PARTS.append((order, name, fn))
        PARTS.sort(key=lambda p: (p[0], p[1]))
        return fn
    return add


@dataclass
class Build:
    """A run as its parts see it while it is assembled."""
    exp: object  # fedft.experiment.Experiment
    pool: object  # fl.runners.Pool: the clients (model, params, data, their indices, local training settings)
    fed: object  # fl.loop.Federation: strategy, runner, hooks, evaluate
    test: object  # the examples the global model is scored on
    record: dict = field(default_factory=dict)  # top-level results.json entries ("dp", "feature_cache", ...)
    final: dict = field(default_factory=dict)  # entries of results.json's "final"
    log: Callable[[str], None] = lambda line: None
    cacheable: bool = True  # may the frozen backbone's features be cached (a proxy run says no)
    profiles: object = None  # the task's client profiles (classification: label shares), for the personal score
