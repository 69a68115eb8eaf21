"""adapter: Houlsby bottleneck adapters after each attention block and each MLP, plus the head.

Each adapter is a child module of the projection it follows and runs in a forward hook, so the frozen
weights keep their names and values. peft has no Houlsby adapter for these models, hence own code.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from fedft.methods.base import METHODS, Method, freeze_all_but
from fedft.models.arch import ADAPTER_AFTER, lookup


class Bottleneck(nn.Module):
    """x -> x + up(gelu(down(x))); `up` starts at zero so a fresh adapter is the identity."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, width)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


def _run_adapter(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return module.adapter(output)


@METHODS.register("adapter")
class Adapter(Method):
    name = "adapter"
    plain = False  # its modules exist only in fedft: exported as trainable.safetensors, with the head
    default_lr = 1e-3

    def apply(self, model):
        patterns = lookup(ADAPTER_AFTER, model.backbone.config.model_type, "method 'adapter'")
        hidden = model.backbone.config.hidden_size
        targets = [m for name, m in model.backbone.named_modules()
                   if isinstance(m, nn.Linear) and any(re.search(p, name) for p in patterns)]
        for linear in targets:
            linear.add_module("adapter", Bottleneck(hidden, self.cfg.bottleneck))
            linear.register_forward_hook(_run_adapter)
        return freeze_all_but(model, lambda name: name.startswith("head.") or ".adapter." in name)
