"""A finished instruct run as plain transformers + peft see it: `fedft generate RUN --prompt`, `fedft export RUN
--merged DIR` (one folder AutoModelForCausalLM alone loads) and `fedft export-base DIR` (the base model folder the
adapter goes onto). Everything is read from the run's exported files, as a user without fedft would read them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from fedft.errors import UsageError
from fedft.folders import write_folder


def _export_info(run: Path) -> dict:
    info = run / "export.json"
    if not info.is_file():
        raise UsageError(f"{str(run)!r}: no export.json (not a finished fedft run folder)")
    data = json.loads(info.read_text())
    if data.get("pooling") is not None or (run / "head.safetensors").is_file():
        raise UsageError(f"{str(run)!r}: a classification run (it has a head); generate and --merged are for "
                         f"instruct runs of a causal LM")
    return data


def load_trained(run: str | Path):
    """(model, tokenizer) of an instruct run: its base, the frozen weights a LoRA variant changed, then the adapter
    (merged) or the trained backbone tensors."""
    import warnings

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    run = Path(run)
    info = _export_info(run)
    base = info.get("base")
    if not base or not Path(base).is_dir():
        raise UsageError(f"{str(run)!r}: its base model {base!r} is not on this machine (fedft export-base DIR "
                         f"writes the built-in one)")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    if (run / "base_weights.safetensors").is_file():  # FedEx-LoRA / FLoRA folded updates into frozen weights
        model.load_state_dict(load_file(str(run / "base_weights.safetensors")), strict=False)
    if (run / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run / "adapter")).merge_and_unload()
    elif (run / "backbone.safetensors").is_file():
        model.load_state_dict(load_file(str(run / "backbone.safetensors")), strict=False)
    return model.eval(), AutoTokenizer.from_pretrained(base)


def generate(run: str | Path, prompt: str, max_new_tokens: int = 64) -> str:
    """The run's greedy answer to one user prompt, through the model's chat template."""
    import torch

    model, tok = load_trained(run)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=False)
    enc = tok(ids, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def new_folder(out: str | Path, save) -> Path:
    """`save(tmp)`, renamed into place at `out` (nothing half-written there); an existing `out` is refused."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"{str(out)!r} exists; give a new folder")
    return write_folder(out, save)


def export_merged(run: str | Path, out: str | Path) -> Path:
    model, tok = load_trained(run)

    def save(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return new_folder(out, save)


def export_base(name: str, out: str | Path) -> Path:
    """A built-in causal LM (smollm2-135m: converted from its package once) as a plain folder at `out`."""
    from fedft.models.causal import smollm2_path

    if name != "smollm2-135m":
        raise UsageError(f"--model {name!r}: export-base writes the built-in smollm2-135m (a local folder already "
                         f"is a base)")
    src = Path(smollm2_path())
    return new_folder(out, lambda tmp: [shutil.copy2(f, tmp / f.name) for f in src.iterdir() if f.is_file()])
