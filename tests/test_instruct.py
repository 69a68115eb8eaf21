"""The instruct task on a tiny random Llama: only response tokens are learned, long prompts are cut from the left,
the exact-match rule, a run that learns and records its base, natural clients from a user's JSONL, the refusals,
and exports that load and generate in plain transformers + peft in a process that never imports fedft."""
import json
import subprocess
import sys

import pytest
import torch

import fedft
from fedft.config import load_config
from fedft.errors import UsageError
from fedft.models.causal import tiny_llama, tiny_tokenizer
from fedft.tasks.instruct import IGNORE, Instruct, encode, exact
from fedft.report import read_clients

CHAT = [{"role": "user", "content": "define the word dog"}, {"role": "assistant", "content": "a domestic animal"}]


def wordnet(**extra):
    base = {"model.name": "tiny-llama", "data.name": "wordnet-instruct", "data.train_per_class": 3,
            "data.test_per_class": 1, "data.partition": "iid", "data.num_clients": 4, "fl.clients_per_round": 2,
            "fl.rounds": 2, "fl.batch_size": 8, "model.max_length": 48, "task.generate": 4, "task.max_new_tokens": 8,
            "fl.precision": "fp32", "fl.lr": 0.01}
    base.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def test_only_response_tokens_are_in_the_loss():
    tok = tiny_tokenizer()
    examples, cut = encode([CHAT], tok, 64)
    prompt = tok(tok.apply_chat_template(CHAT[:1], add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    inputs, targets = examples.batch([0])
    t = targets[0]
    assert (t[: len(prompt)] == IGNORE).all() and (t[len(prompt):] != IGNORE).all()
    assert tok.decode(t[len(prompt):]).replace(" ", "").startswith("adomesticanimal")
    assert cut == {"prompts_cut": 0, "responses_cut": 0}
    task = Instruct()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, t.shape[0], tok.vocab_size, generator=g)
    want = torch.nn.functional.cross_entropy(logits[0, len(prompt) - 1: -1], t[len(prompt):])
    assert torch.allclose(task.loss(logits, targets), want, atol=1e-6)
    changed = logits.clone()
    changed[0, : len(prompt) - 1] += 5 * torch.randn(len(prompt) - 1, tok.vocab_size, generator=g)
    assert torch.equal(task.loss(changed, targets), task.loss(logits, targets))  # the prompt's positions never count


def test_a_long_prompt_is_cut_from_the_left_never_the_response():
    tok = tiny_tokenizer()
    long = [{"role": "user", "content": "word " * 80 + "define dog"}, CHAT[1]]
    full, _ = encode([long], tok, 400)
    short, cut = encode([long], tok, 24)
    assert cut == {"prompts_cut": 1, "responses_cut": 0}
    ids, targets = short.ids[0], short.targets[0]
    assert len(ids) == 24
    n_resp = int((targets != IGNORE).sum())
    assert torch.equal(ids[-n_resp:], full.ids[0][-n_resp:])  # the whole response
    assert torch.equal(ids, full.ids[0][-24:])  # the prompt's end (the generation prompt) stays, its start goes
    assert torch.equal(short.prompts[0], ids[:-n_resp])


def test_exact_match_rule():
    assert exact("Durative.", ["durative", "durative aspect"])
    assert exact("  durative   ASPECT ", ["durative", "durative aspect"])
    assert not exact("durative aspect of verbs", ["durative", "durative aspect"])
    assert not exact("", ["dog"])


def test_a_run_learns_and_records_its_base(tmp_path):
    result = fedft.run(load_config(None, wordnet(**{"fl.rounds": 3, "fl.lr": 0.05})), tmp_path / "run")
    data = json.loads((result.out_dir / "results.json").read_text())
    assert data["config"]["task"]["name"] == "auto" and set(data["base"]) >= {"loss", "perplexity", "rougeL"}
    assert data["final"]["loss"] < data["base"]["loss"]  # held-out response loss went down
    assert data["final"]["perplexity"] == pytest.approx(2.718281828 ** data["final"]["loss"], rel=1e-6)
    assert 0 <= data["final"]["rougeL"] <= 1 and data["final"]["accuracy"] is None
    assert data["exported"][0].startswith("adapter/") and "head.safetensors" not in data["exported"]
    samples = data["final"]["samples"]
    assert len(samples) == 3 and all(set(s) == {"prompt", "reference", "base", "trained"} for s in samples)
    assert samples[0]["prompt"].startswith(("Define", "Use", "Give"))


def test_a_users_jsonl_with_its_own_columns_runs_as_natural_clients(tmp_path):
    rows = [{"q": f"question {i} about {site}", "a": f"answer {i}", "site": site}
            for site in ("north", "south", "east") for i in range(4)]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [f"{k}={json.dumps(v)}" for k, v in {
        "model.name": "tiny-llama", "data.name": f"jsonl:{path}", "data.prompt_column": "q",
        "data.response_column": "a", "data.client_column": "site", "data.partition": "natural", "data.num_clients": 0,
        "fl.clients_per_round": 2, "fl.rounds": 1, "data.test_fraction": 0.25, "task.generate": 2}.items()]
    result = fedft.run(load_config(None, sets), tmp_path / "run")
    data = json.loads((result.out_dir / "results.json").read_text())
    assert read_clients(result.out_dir)["rows"] == [3, 3, 3] and data["clients"]["count"] == 3 and data["num_test"] == 3 and data["classes"] == ["east", "north", "south"]


@pytest.mark.parametrize("rows, words", [
    ([{"instruction": "hi", "response": ""}], "row 1, column 'response': empty"),
    ([{"instruction": "hi", "response": "yo"}, {"instruction": "", "response": "x"}], "row 2, column 'instruction'"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "row 1, column 'messages': the chat has no assistant turn"),
    ([{"instruction": "hi", "answer": "yo"}], "no column 'response'"),
])
def test_bad_instruction_rows_are_refused_naming_file_row_and_column(tmp_path, rows, words):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from fedft.api import prepare

    with pytest.raises(UsageError, match=words) as e:
        prepare(load_config(None, ['model.name="tiny-llama"', f'data.name="jsonl:{path}"', "data.num_clients=1",
                                   "fl.clients_per_round=1"]))
    assert str(path) in str(e.value)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A tiny Llama and a tiny BERT saved as plain Hugging Face folders."""
    from fedft.config import ModelConfig
    from fedft.models import load_backbone

    llama = tmp_path_factory.mktemp("tiny-llama-base")
    tiny_llama(tiny_tokenizer().vocab_size).save_pretrained(llama)
    tiny_tokenizer().save_pretrained(llama)
    bert = tmp_path_factory.mktemp("tiny-bert-base")
    b = load_backbone(ModelConfig(name="tiny-bert"))
    b.model.save_pretrained(bert)
    b.tokenizer.save_pretrained(bert)
    return llama, bert


@pytest.mark.parametrize("extra, words", [
    ({"method.name": "head"}, "method.name = 'head' with the instruct task"),
    ({"method.name": "bias"}, "no bias parameters"),
    ({"fl.parallel_clients": 2}, "fl.parallel_clients > 1 with the instruct task"),
    ({"data.name": "wordnet-nouns"}, "is a causal LM: it learns instructions"),
    ({"task.name": "classify"}, "does not hold classify data"),
])
def test_what_cannot_apply_to_the_task_is_refused(extra, words):
    from fedft.api import prepare

    with pytest.raises(UsageError, match=words):
        prepare(load_config(None, wordnet(**extra)))


def test_an_encoder_is_refused_for_the_instruct_task(bases):
    from fedft.api import prepare

    with pytest.raises(UsageError, match="is not a causal language model"):
        prepare(load_config(None, wordnet(**{"model.name": str(bases[1])})))


PLAIN = r'''
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base, run, merged, prompt = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(base)
text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
enc = tok(text, add_special_tokens=False, return_tensors="pt")
answers = []
for model in (PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), f"{run}/adapter"),
              AutoModelForCausalLM.from_pretrained(merged)):
    with torch.no_grad():
        out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=8,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    answers.append(out[0, enc["input_ids"].shape[1]:].tolist())
print(json.dumps({"answers": answers, "fedft_loaded": "fedft" in sys.modules}))
'''


def test_adapter_and_merged_exports_generate_in_plain_transformers(tmp_path, bases):
    from fedft.cli import main
    from fedft.tasks.lm_files import generate

    llama = bases[0]
    result = fedft.run(load_config(None, wordnet(**{"model.name": str(llama), "fl.lr": 0.05})), tmp_path / "run")
    adapter = json.loads((result.out_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(llama) and set(adapter["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj"}
    assert main(["export", str(result.out_dir), "--merged", str(tmp_path / "merged")]) == 0
    assert main(["export", str(result.out_dir), "--merged", str(tmp_path / "merged")]) == 2  # never overwritten
    prompt = "Define the word 'dog'."
    done = subprocess.run([sys.executable, "-c", PLAIN, str(llama), str(result.out_dir), str(tmp_path / "merged"),
                           prompt], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "missing adapter keys" not in done.stderr.lower(), done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["fedft_loaded"] is False
    assert out["answers"][0] == out["answers"][1] and len(out["answers"][0]) > 0  # adapter == merged
    tok = tiny_tokenizer()
    assert generate(result.out_dir, prompt, 8) == tok.decode(out["answers"][0], skip_special_tokens=True).strip()
    from safetensors.torch import load_file

    weights = load_file(str(result.out_dir / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # trained, not zero
    assert all(k.startswith("base_model.model.model.layers.") for k in weights)  # AutoModelForCausalLM's names


@pytest.mark.parametrize("mode", ["local", "central"])
def test_local_only_and_central_baselines_report_the_tasks_metrics(tmp_path, mode):
    result = fedft.run(load_config(None, wordnet(**{"fl.mode": mode})), tmp_path / mode)
    rows = json.loads((result.out_dir / "results.json").read_text())["rounds"]
    assert rows[-1]["loss"] is not None and all(set(r) == set(rows[-1]) for r in rows)
    assert all((r["rougeL"] is not None and r["perplexity"] is not None) == (r["loss"] is not None) for r in rows)
    assert result.final["rougeL"] == rows[-1]["rougeL"] and result.final["accuracy"] is None


def test_a_resumed_run_keeps_its_base_without_evaluating_the_base_model_again(tmp_path):
    """The base model's figures and answers come back from the checkpoint: the resumed run never evaluates the base
    model (a real model's greedy answers take minutes), and its results.json equals the uninterrupted run's."""
    sets = wordnet(**{"fl.rounds": 3})
    whole = json.loads((fedft.run(load_config(None, sets), tmp_path / "whole").out_dir / "results.json").read_text())

    def stop_after_one(line):
        if line.startswith("round   1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fedft.run(load_config(None, sets), tmp_path / "cut", log=stop_after_one)
    lines = []
    fedft.run(load_config(None, sets), tmp_path / "cut", log=lines.append, resume=True)
    assert any(line.startswith("resuming after round 1") for line in lines)
    assert not any(line.startswith("base model") for line in lines)  # not evaluated again
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut["base"] == whole["base"] and cut["final"]["samples"] == whole["final"]["samples"]
    assert [r["loss"] for r in cut["rounds"]] == [r["loss"] for r in whole["rounds"]]
