"""prompt: learned prompt tokens inserted after the first ([CLS]) token, plus the head (VPT on images).

Shallow: one set of prompt tokens at the input (text: spliced into the input embeddings with the attention
mask extended; images: in a hook on the patch embeddings' output). Deep (VPT-deep): a fresh set replaces the prompt positions
at the input of every transformer layer. peft's prompt tuning has no deep variant for encoders and runs
through task-specific wrappers, so this is own code; the result is exported as safetensors.
"""
from __future__ import annotations

import torch
from torch import nn

from fedft.methods.base import METHODS, Method, freeze_all_but
from fedft.models.arch import ADAPTER_AFTER, lookup, transformer_layers


class Prompts(nn.Module):
    def __init__(self, num_sets: int, length: int, hidden: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_sets, length, hidden) * 0.02)  # (L or 1, P, H)

    @property
    def length(self) -> int:
        """P: the prompt tokens in positions 1..P of every layer's input."""
        return self.tokens.shape[1]

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # embeds (B, T, H), mask (B, T) -> (B, 1+P+T-1, H), mask likewise
        b, p = embeds.shape[0], self.tokens.shape[1]
        prompts = self.tokens[0].unsqueeze(0).expand(b, -1, -1).to(embeds.dtype)
        embeds = torch.cat([embeds[:, :1], prompts, embeds[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], mask.new_ones(b, p), mask[:, 1:]], dim=1)
        return embeds, mask

    def insert(self, embeds: torch.Tensor) -> torch.Tensor:
        """Images: (B, 1+N, H) patch embeddings -> (B, 1+P+N, H)."""
        prompts = self.tokens[0].unsqueeze(0).expand(embeds.shape[0], -1, -1).to(embeds.dtype)
        return torch.cat([embeds[:, :1], prompts, embeds[:, 1:]], dim=1)

    def replace(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Deep prompts: layer `layer`'s own tokens in positions 1..P of its input (B, 1+P+T', H)."""
        p = self.tokens.shape[1]
        fresh = self.tokens[layer].unsqueeze(0).expand(hidden.shape[0], -1, -1).to(hidden.dtype)
        return torch.cat([hidden[:, :1], fresh, hidden[:, 1 + p:]], dim=1)


def _deep_hook(prompts: Prompts, layer: int):
    def hook(module, args, kwargs):
        if args:
            return (prompts.replace(layer, args[0]), *args[1:]), kwargs
        kwargs["hidden_states"] = prompts.replace(layer, kwargs["hidden_states"])
        return args, kwargs
    return hook


@METHODS.register("prompt")
class Prompt(Method):
    name = "prompt"
    plain = False  # its modules exist only in fedft: exported as trainable.safetensors, with the head
    default_lr = 1e-2

    @property
    def keep_fp32(self) -> str:
        # benchmarks/studies/precision/table.md, 3 seed pairs of the default run: deep prompts lost 0.35 +- 0.13
        # (SE) points to bf16, fp32 ahead on every seed; shallow prompts' gap was within 2 SE.
        if self.cfg.deep:
            return ("method.deep = true (deep prompts measured 0.35 points less accurate in bf16: "
                    "benchmarks/studies/precision/table.md)")
        return ""

    def apply(self, model):
        lookup(ADAPTER_AFTER, model.backbone.config.model_type, "method 'prompt'")  # a layout we know
        layers = transformer_layers(model.backbone)
        hidden = model.backbone.config.hidden_size
        model.prompt = Prompts(len(layers) if self.cfg.deep else 1, self.cfg.prompt_length, hidden)
        if model.modality == "image":
            prompts = model.prompt
            model.backbone.embeddings.register_forward_hook(lambda module, args, out: prompts.insert(out))
        if self.cfg.deep:
            for i, layer in enumerate(layers):
                if i > 0:
                    layer.register_forward_pre_hook(_deep_hook(model.prompt, i), with_kwargs=True)
        return freeze_all_but(model, lambda name: name.startswith(("head.", "prompt.")))
