"""Accuracy and loss of the current model on a fixed test set."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedft.fl.client import autocast


@torch.inference_mode()
def evaluate(model: nn.Module, data, batch_size: int = 256, precision: str = "fp32") -> tuple[float, float]:
    """(accuracy, mean cross-entropy). Examples are batched by length to keep padding small; the sums stay
    on the model's device until the end."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(data.lengths(), kind="stable") if hasattr(data, "lengths") else np.arange(len(data))
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(order), batch_size):
        inputs, labels = data.batch(order[i: i + batch_size])
        with autocast(device, precision):
            logits = model(**inputs).float()
        loss += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(-1) == labels).sum()
    return int(correct) / len(order), float(loss) / len(order)
