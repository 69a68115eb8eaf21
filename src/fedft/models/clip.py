"""CLIP's image tower as a backbone, and CLIP's text tower as the source of a zero-shot head."""
from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling


class ClipImageTower(nn.Module):
    """CLIPModel's vision transformer + projection. `pooler_output` is logit_scale * the L2-normalised image
    embedding, so a head whose rows are normalised text embeddings gives exactly CLIP's zero-shot logits."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection
        self.register_buffer("scale", clip.logit_scale.detach().exp().clone())
        self.config = clip.config.vision_config
        self.feature_dim = clip.config.projection_dim

    @property
    def embeddings(self) -> nn.Module:
        return self.vision_model.embeddings

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        out = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=True)
        features = self.visual_projection(out.pooler_output)  # (B, D): post-layernorm [CLS], projected
        features = self.scale * features / features.norm(dim=-1, keepdim=True)
        return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=features)


@torch.no_grad()
def text_head_weights(clip, tokenizer, classes: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """(C, D): the L2-normalised CLIP text embedding of each class name in the template."""
    tokens = tokenizer([template.format(c.replace("_", " ")) for c in classes], padding=True, return_tensors="pt")
    out = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return emb / emb.norm(dim=-1, keepdim=True)
