"""Accuracy and loss of the current model on a fixed test set (the classification task's scoring)."""
from __future__ import annotations

from torch import nn

from fedft.tasks.classify import CLASSIFY


def evaluate(model: nn.Module, data, batch_size: int = 256, precision: str = "fp32") -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    m = CLASSIFY.evaluate(model, data, batch_size, precision)
    return m["accuracy"], m["loss"]
