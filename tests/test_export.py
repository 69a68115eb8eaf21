"""A finished run's model loads without fedft: in a fresh Python process that never imports fedft, plain
transformers + peft + safetensors rebuild the classifier from the run folder and reproduce fedft's test accuracy."""
import json
import subprocess
import sys

import pytest

import fedft
from fedft.config import load_config
from fedft.data import load_dataset

PLAIN = r'''
import json, sys
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

run, data = sys.argv[1], json.load(open(sys.argv[2]))
info = json.load(open(f"{run}/export.json"))
model = AutoModel.from_pretrained(info["base"])
try:  # FedEx-LoRA folded residuals into the frozen weights: load them first
    missing, unexpected = model.load_state_dict(load_file(f"{run}/base_weights.safetensors"), strict=False)
    assert not unexpected, unexpected
except FileNotFoundError:
    pass
if "adapter/adapter_config.json" in info["files"]:  # lora and lora_sb: a PEFT LoRA adapter
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, f"{run}/adapter")
else:
    missing, unexpected = model.load_state_dict(load_file(f"{run}/backbone.safetensors"), strict=False)
    assert not unexpected, unexpected
head = load_file(f"{run}/head.safetensors")
tok = AutoTokenizer.from_pretrained(info["base"])
enc = tok(data["texts"], truncation=True, max_length=48, padding=True, return_tensors="pt")
model.eval()
with torch.no_grad():
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # info["pooling"] == "mean"
    logits = pooled @ head["weight"].T + head["bias"]
labels = torch.tensor([info["classes"].index(c) for c in data["classes"]])
print(json.dumps({"accuracy": float((logits.argmax(-1) == labels).float().mean()), "pooling": info["pooling"],
                  "fedft_loaded": "fedft" in sys.modules}))
'''


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny BERT saved as a plain Hugging Face folder (with minilm's tokenizer): the run's model.name."""
    from fedft.models import load_backbone
    from fedft.config import ModelConfig

    folder = tmp_path_factory.mktemp("tiny-bert-base")
    backbone = load_backbone(ModelConfig(name="tiny-bert"))
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method, extra", [("lora", {}), ("bias", {}), ("lora", {"method.variant": "fedex"}),
                                           ("lora_sb", {})], ids=["lora", "bias", "lora-fedex", "lora-sb"])
def test_exported_model_reproduces_the_accuracy_without_fedft(tmp_path, tiny, base, method, extra):
    config = load_config(None, tiny(**{"model.name": str(base), "method.name": method, "fl.lr": 0.05,
                                       "fl.rounds": 3, "fl.precision": "fp32", **extra}))
    result = fedft.run(config, tmp_path / "run")
    _, test = load_dataset(config.data)
    classes = json.loads((tmp_path / "run" / "export.json").read_text())["classes"]
    (tmp_path / "test.json").write_text(json.dumps({"texts": test.texts,
                                                    "classes": [classes[i] for i in test.labels]}))
    done = subprocess.run([sys.executable, "-c", PLAIN, str(tmp_path / "run"), str(tmp_path / "test.json")],
                          capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "missing adapter keys" not in done.stderr.lower(), done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["fedft_loaded"] is False and out["pooling"] == "mean"
    assert abs(out["accuracy"] - result.final["accuracy"]) <= 0.001, (out, result.final["accuracy"])
    assert result.final["accuracy"] > 0.3  # it learned something (4 classes): the match is not two chance scores
