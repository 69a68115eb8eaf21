"""lora: low-rank updates on the attention projections (Hugging Face peft) plus the head.

method.ffa = true is FFA-LoRA (Sun et al., ICLR 2024): A stays frozen at its (seeded, shared) random init
and only B and the head train, so the update is linear in what is averaged, which holds up under DP noise.
"""
from __future__ import annotations

from pathlib import Path

from fedft.methods.base import METHODS, Method
from fedft.models.arch import LORA_TARGETS, lookup


@METHODS.register("lora")
class Lora(Method):
    name = "lora"
    default_lr = 3e-3

    def apply(self, model):
        from peft import LoraConfig, get_peft_model

        targets = self.cfg.targets or lookup(LORA_TARGETS, model.backbone.config.model_type, "method 'lora'")
        config = LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout,
                            target_modules=targets, modules_to_save=["head"])
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
        """Hugging Face PEFT's own format, loadable with PeftModel.from_pretrained(classifier, out_dir/'adapter')."""
        import json
        import shutil
        import tempfile

        config = model.peft_config["default"]
        config.base_model_name_or_path = meta.get("model_source")
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".adapter-"))
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        (tmp / "fedft.json").write_text(json.dumps(dict(meta, method=self.name), indent=2))
        final = out_dir / "adapter"
        if final.exists():
            shutil.rmtree(final)
        tmp.chmod(0o755)
        tmp.rename(final)  # the whole folder appears at once
        return ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/fedft.json"]
