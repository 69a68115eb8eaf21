"""Classification: a linear head on the pooled backbone output, cross-entropy, accuracy."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedft.tasks.base import TASKS, Task


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The classification loss, in fp32 whatever the forward pass ran in."""
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)


@TASKS.register("classify")
class Classify(Task):
    name = "classify"

    def loss(self, outputs, targets, reduction="mean"):
        return cross_entropy(outputs, targets, reduction)

    @torch.inference_mode()
    def evaluate(self, model, data, batch_size=256, precision="fp32"):
        """Accuracy and mean cross-entropy on `data`. Examples are batched by length to keep padding small; the
        sums stay on the model's device until the end."""
        from fedft.fl.precision import autocast

        model.eval()
        device = next(model.parameters()).device
        order = np.argsort(data.lengths(), kind="stable") if hasattr(data, "lengths") else np.arange(len(data))
        correct = torch.zeros((), dtype=torch.long, device=device)
        loss = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(order), batch_size):
            inputs, labels = data.batch(order[i: i + batch_size])
            with autocast(device, precision):
                logits = model(**inputs).float()
            loss += cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(-1) == labels).sum()
        return {"accuracy": int(correct) / len(order), "loss": float(loss) / len(order)}


CLASSIFY = Classify()
