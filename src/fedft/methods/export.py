"""Exports that load without fedft: the trained head and, where a method's parameters live in the plain backbone
(bias, full, head, LoRA), those parameters in a form plain transformers / peft load onto
`AutoModel.from_pretrained(base)`.

Written next to fedft's own files:
- `head.safetensors`: the linear head, `weight` (C, D) and `bias` (C,);
- `export.json`: the base model, the pooling the head reads (`mean`: the mean of the last hidden states over
  the attention mask for text, over the patch tokens without [CLS] for images; `cls`: the first token;
  `pooler`: the backbone's pooler output), the classes in order, and the files;
- `backbone.safetensors` (bias, full, head): trained backbone tensors under the backbone's own names, for
  `model.load_state_dict(load_file(...), strict=False)`;
- `adapter/` (lora): a PEFT adapter of the plain backbone, for `PeftModel.from_pretrained(model, "adapter")`.
No *ForSequenceClassification class of these architectures pools by the mean, so the head is not merged into one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

BACKBONE = "backbone."


def classifier_of(model: nn.Module) -> nn.Module:
    """fedft's Classifier inside a (PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The head the model really uses: under PEFT's modules_to_save, the trained copy."""
    head = classifier_of(model).head
    active = getattr(head, "modules_to_save", None)
    if active is not None:
        head = active[getattr(head, "active_adapter", "default") if isinstance(getattr(head, "active_adapter", None),
                                                                              str) else "default"]
    return {"weight": head.weight.detach().contiguous().cpu(), "bias": head.bias.detach().contiguous().cpu()}


def backbone_tensors(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Trained tensors of the backbone (`names`: the model's parameter names) under the backbone's own names."""
    params = dict(model.named_parameters())
    return {n[len(BACKBONE):]: params[n].detach().contiguous().cpu() for n in names if n.startswith(BACKBONE)}


def write_plain(model: nn.Module, out_dir: Path, meta: dict, backbone: dict[str, torch.Tensor] | None,
                extra_files: list[str] = ()) -> list[str]:
    """head.safetensors, export.json and (given) backbone.safetensors; returns the file names."""
    from safetensors.torch import save_file

    from fedft.report import atomic_write

    clf = classifier_of(model)
    files = ["export.json"]
    if getattr(clf, "head", None) is not None:  # (a causal LM has its own LM head, in the base model)
        atomic_write(out_dir / "head.safetensors", lambda p: save_file(head_tensors(model), str(p)))
        files.insert(0, "head.safetensors")
    if backbone:
        atomic_write(out_dir / "backbone.safetensors", lambda p: save_file(backbone, str(p)))
        files.insert(len(files) - 1, "backbone.safetensors")
    info = {"base": meta.get("model_source"), "modality": clf.modality, "pooling": clf.pooling,
            "classes": meta.get("classes"), "method": meta.get("method"),
            "files": [*files, *extra_files]}
    atomic_write(out_dir / "export.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))
    return files


def write_adapter(model: nn.Module, out_dir: Path, meta: dict, config, state: dict[str, torch.Tensor]) -> list[str]:
    """A PEFT LoRA adapter of the plain backbone in `adapter/` (its config, `state` under peft's names, fedft.json;
    the whole folder appears at once), then head.safetensors and export.json; returns the file names."""
    from safetensors.torch import save_file

    from fedft.folders import write_folder

    def save(tmp: Path) -> None:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "fedft.json").write_text(json.dumps(meta, indent=2))

    write_folder(out_dir / "adapter", save, exists="replace")
    files = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/fedft.json"]
    return files + write_plain(model, out_dir, meta, None, files)
