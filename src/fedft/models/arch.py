"""Where each architecture keeps the modules that tuning methods touch, named in one place.

Keys are Hugging Face `config.model_type` values. Patterns are regular expressions matched against
full module names inside the backbone (`re.search`).
"""
from __future__ import annotations

from torch import nn

# LoRA's default targets: the attention query and value projections.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "vit": ["q_proj", "v_proj"],  # transformers 5 names ViT's and DINOv2's attention projections q/k/v/o_proj
    "dinov2": ["q_proj", "v_proj"],
    "clip": ["q_proj", "v_proj"],
    "clip_vision_model": ["q_proj", "v_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],  # decoders (the instruct task): every attention projection
}

# Houlsby adapters go after the attention output projection and after the MLP's output projection.
ADAPTER_AFTER: dict[str, list[str]] = {
    "bert": [r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"],
    "roberta": [r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"],
    "xlm-roberta": [r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"],
    "electra": [r"attention\.output\.dense$", r"layer\.\d+\.output\.dense$"],
    "vit": [r"attention\.o_proj$", r"mlp\.fc2$"],
    "dinov2": [r"attention\.o_proj$", r"mlp\.fc2$"],
    "clip": [r"self_attn\.out_proj$", r"mlp\.fc2$"],
    "clip_vision_model": [r"self_attn\.out_proj$", r"mlp\.fc2$"],
}

# The feed-forward block of a transformer layer: (W_in, W_out) as module names inside one layer. W_in maps
# hidden -> d_ff neurons (a Linear with weight (d_ff, H)), W_out maps them back (weight (H, d_ff)).
FFN_MODULES: dict[str, tuple[str, str]] = {
    "bert": ("intermediate.dense", "output.dense"),
    "roberta": ("intermediate.dense", "output.dense"),
    "xlm-roberta": ("intermediate.dense", "output.dense"),
    "electra": ("intermediate.dense", "output.dense"),
    "vit": ("mlp.fc1", "mlp.fc2"),
    "dinov2": ("mlp.fc1", "mlp.fc2"),
}


def lookup(table: dict[str, list[str]], model_type: str, what: str) -> list[str]:
    from fedft.errors import UsageError

    if model_type not in table:
        raise UsageError(f"{what} does not know where to act in a {model_type!r} model; "
                         f"known architectures: {', '.join(sorted(table))}")
    return table[model_type]


def layer_list_name(backbone: nn.Module) -> str:
    """Where the list of transformer blocks sits in the backbone (BERT/DINOv2: encoder.layer, ViT: layers, CLIP:
    encoder.layers)."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers"):
            return name
    raise ValueError(f"no transformer layer list found in {type(backbone).__name__}")


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks."""
    return backbone.get_submodule(layer_list_name(backbone))
