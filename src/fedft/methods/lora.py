"""lora: low-rank updates on the attention projections (Hugging Face peft) plus the head.

method.ffa = true is FFA-LoRA (Sun et al., ICLR 2024): A stays frozen at its (seeded, shared) random init
and only B and the head train, so the update is linear in what is averaged, which holds up under DP noise.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from fedft.methods.base import METHODS, Method
from fedft.models.arch import LORA_TARGETS, lookup


@METHODS.register("lora")
class Lora(Method):
    name = "lora"
    default_lr = 3e-3
    use_dora = False  # methods/dora.py

    def apply(self, model):
        from peft import LoraConfig, get_peft_model

        targets = self.cfg.targets or lookup(LORA_TARGETS, model.backbone.config.model_type, "method 'lora'")
        rank = self.cfg.rank_max or self.cfg.rank  # heterogeneous ranks: the global LoRA has the largest (lora_ranks.py)
        head = ["head"] if isinstance(getattr(model, "head", None), nn.Module) else None  # (a causal LM: none;
        # peft matches by suffix, so "head" would also train its lm_head)
        config = LoraConfig(r=rank, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout,
                            target_modules=targets, modules_to_save=head, use_dora=self.use_dora)
        try:
            model = get_peft_model(model, config)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            from fedft.errors import UsageError

            raise UsageError(f"method.targets = {targets}: {str(e).splitlines()[0]}") from None
        if self.cfg.ffa:
            for name, p in model.named_parameters():
                if ".lora_A." in name:
                    p.requires_grad_(False)
        return model

    def export(self, model, out_dir: Path, meta: dict) -> list[str]:
        """A PEFT adapter of the plain backbone in `adapter/`: `PeftModel.from_pretrained(AutoModel.from_pretrained(
        base), "RUN/adapter")` loads every LoRA weight. The head goes to head.safetensors (methods/export.py)."""
        import copy

        from peft.utils import get_peft_model_state_dict

        from fedft.methods.export import BACKBONE, write_adapter

        config = copy.deepcopy(model.peft_config["default"])
        config.base_model_name_or_path = meta.get("model_source")
        config.modules_to_save = None  # the head is not part of the plain backbone: head.safetensors
        prefix = f"base_model.model.{BACKBONE}"
        state = {k.replace(prefix, "base_model.model.", 1): v.detach().contiguous().cpu()
                 for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items() if k.startswith(prefix)}
        return write_adapter(model, out_dir, dict(meta, method=self.name), config, state)
