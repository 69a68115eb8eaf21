"""Accuracy and loss of the current model on a fixed test set."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, data, batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy). Examples are batched by length to keep padding small."""
    model.eval()
    order = np.argsort(data.lengths(), kind="stable") if hasattr(data, "lengths") else np.arange(len(data))
    correct, loss = 0, 0.0
    for i in range(0, len(order), batch_size):
        inputs, labels = data.batch(order[i: i + batch_size])
        logits = model(**inputs)
        loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
    return correct / len(order), loss / len(order)
