"""The method interface and the default export of trained parameters."""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fedft.config import MethodConfig
from fedft.fl.parts import part
from fedft.registry import Registry

METHODS: Registry[type["Method"]] = Registry("method")


class Method:
    """Turns a classifier into the module clients train: sets requires_grad, may add or wrap modules."""

    name: ClassVar[str]
    default_lr: ClassVar[float]  # the local learning rate used when fl.lr = 0

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    def apply(self, model: nn.Module) -> nn.Module:
        """Freeze what this method does not train; return the module to train and evaluate."""
        raise NotImplementedError

    def hooks(self, pool, num_clients: int, seed: int) -> list:
        """Round hooks this method needs (fedft.fl.hooks.Hook; method layers: which layers each client trains)."""
        return []

    @property
    def keep_fp32(self) -> str:
        """Why fl.precision = auto keeps this method, as configured, in fp32 (bf16 measured to cost accuracy);
        "" where bf16 is fine."""
        return ""

    plain: ClassVar[bool] = True  # its trained tensors are plain backbone tensors (not adapters or prompts)

    def export(self, model: nn.Module, out_dir: Path, meta: dict) -> list[str]:
        """Write the trained parameters; return the file names written. Default: fedft's trainable.safetensors +
        JSON, and the head (and, for methods that train plain backbone tensors, those) in the form that loads
        without fedft (methods/export.py)."""
        from safetensors.torch import save_file

        from fedft.methods.export import backbone_tensors, write_plain
        from fedft.report import atomic_write

        trained = trainable_parameters(model)
        state = {k: v.detach().contiguous() for k, v in trained.items()}
        atomic_write(out_dir / "trainable.safetensors", lambda p: save_file(state, str(p)))
        info = dict(meta, method=self.name, tensors={k: list(v.shape) for k, v in state.items()})
        atomic_write(out_dir / "trainable.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))
        backbone = backbone_tensors(model, list(trained)) if self.plain else None
        return ["trainable.safetensors", "trainable.json",
                *write_plain(model, out_dir, dict(meta, method=self.name), backbone)]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters clients train and send, by name (the order is the model's)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def freeze_all_but(model: nn.Module, keep) -> nn.Module:
    """requires_grad = keep(name) for every parameter."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters of the tuned model, counting shared tensors once and leaving out PEFT's frozen copy of a
    module it trains a copy of (`original_module`), so a LoRA model counts as backbone + head + LoRA."""
    seen, total = set(), 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if ".original_module." in name or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def freeze_unused(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """Freeze trainable parameters that one forward pass never reaches (BERT's pooler under mean pooling,
    DINOv2's mask token): they would get no gradient, yet be counted and sent. Returns their names."""
    was_training = model.training
    model.eval()
    model(**inputs).float().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


@torch.no_grad()
def frozen_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every frozen parameter and buffer (tests check these never change)."""
    out = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    out.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return out


@part(40)
def method_hooks(b) -> None:
    """The round hooks the run's method brings (fedft.fl.parts: installed into every run)."""
    b.fed.hooks += b.exp.method.hooks(b.pool, len(b.exp.clients), b.exp.config.fl.seed)
