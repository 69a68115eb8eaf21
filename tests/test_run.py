"""Whole runs on a tiny model: every method, mode and strategy, the files written, reproducibility, export."""
import csv
import json

import numpy as np
import pytest
import torch

import fedft
from fedft.config import load_config
from fedft.methods import METHODS
from fedft.report import read_clients

KEYS_ROUND = {"round", "accuracy", "loss", "bytes_up", "bytes_down", "clients", "seconds"}
KEYS_FINAL = {"accuracy", "bytes_total", "trainable_params", "total_params"}


def run(tmp_path, tiny, name="r", **extra):
    return fedft.run(load_config(None, tiny(**extra)), tmp_path / name)


@pytest.mark.parametrize("method", METHODS.names())
def test_two_rounds_of_every_method(tmp_path, tiny, method):
    result = run(tmp_path, tiny, **{"method.name": method})
    data = json.loads((result.out_dir / "results.json").read_text())
    assert data["status"] == "completed" and data["config"]["method"]["name"] == method
    assert len(data["rounds"]) == 2 and KEYS_ROUND <= set(data["rounds"][0])
    assert KEYS_FINAL <= set(data["final"])
    assert 0.0 <= data["final"]["accuracy"] <= 1.0
    f = data["final"]
    assert f["bytes_total"] == sum(r["bytes_up"] + r["bytes_down"] for r in data["rounds"])
    report = 4 * 2 if method == "layers" else 0  # layers (budget 2 = both layers): + each client's importance report
    init = data.get("lora_sb", {}).get("init_bytes_up", 0)  # lora_sb: the clients' gradients before round 1
    assert all(r["bytes_up"] == (f["payload_bytes"] + report) * len(r["clients"]) + init * (r["round"] == 1)
               for r in data["rounds"])
    assert 0 < f["trainable_params"] <= f["total_params"]
    rows = list(csv.DictReader((result.out_dir / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert (result.out_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for name in data["exported"]:
        assert (result.out_dir / name).is_file()


def test_same_config_same_results(tmp_path, tiny):
    a = run(tmp_path, tiny, "a", **{"method.name": "bias", "data.partition": "dirichlet"})
    b = run(tmp_path, tiny, "b", **{"method.name": "bias", "data.partition": "dirichlet"})
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a.rounds) == strip(b.rounds)
    ta = (a.out_dir / "trainable.safetensors").read_bytes()
    assert ta == (b.out_dir / "trainable.safetensors").read_bytes()
    c = run(tmp_path, tiny, "c", **{"method.name": "bias", "data.partition": "dirichlet", "fl.seed": 1})
    assert strip(c.rounds) != strip(a.rounds)


@pytest.mark.parametrize("strategy", ["fedprox", "fedavgm", "fedadam", "median", "trimmed_mean", "krum"])
def test_strategies_run(tmp_path, tiny, strategy):
    krum = {"data.num_clients": 5, "fl.clients_per_round": 5} if strategy == "krum" else {}  # n > 2f + 2
    result = run(tmp_path, tiny, **{"method.name": "bias", "fl.strategy": strategy, **krum})
    assert len(result.rounds) == 2 and result.final["accuracy"] is not None


def test_local_and_central_baselines(tmp_path, tiny):
    local = run(tmp_path, tiny, "local", **{"method.name": "head", "fl.mode": "local"})
    assert local.final["bytes_total"] == 0 and len(local.rounds[0]["clients"]) == 4
    central = run(tmp_path, tiny, "central", **{"method.name": "head", "fl.mode": "central"})
    assert central.final["bytes_total"] == 0 and central.final["accuracy"] is not None


def test_same_config_same_results_json_across_processes(tmp_path, tiny):
    import os
    import subprocess
    import sys

    def run_process(name):
        args = [a for o in tiny(**{"method.name": "lora", "data.partition": "dirichlet"}) for a in ("--set", o)]
        subprocess.run([sys.executable, "-m", "fedft.cli", "run", *args, "--out", str(tmp_path / name), "--quiet"],
                       check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True)
        data = json.loads((tmp_path / name / "results.json").read_text())
        for r in data["rounds"]:
            r.pop("seconds")
        data["final"].pop("seconds")
        machine = data.pop("machine")  # the processor and the start time: where and when, not what
        assert machine["cpu"] and machine["threads"] >= 1 and machine["started"][:2] == "20"
        return data, (tmp_path / name / "adapter" / "adapter_model.safetensors").read_bytes()

    assert run_process("a") == run_process("b")


def test_server_sees_float16_rounded_updates(tmp_path, tiny):
    from safetensors.torch import load_file

    result = run(tmp_path, tiny, **{"method.name": "bias", "comm.dtype": "float16", "fl.clients_per_round": 1})
    state = load_file(str(result.out_dir / "trainable.safetensors"))  # FedAvg of one update = that update
    assert all(torch.equal(v, v.half().float()) for v in state.values())
    assert any(not torch.equal(v, v.half().float()) for v in
               load_file(str(run(tmp_path, tiny, "f32", **{"method.name": "bias", "fl.clients_per_round": 1}
                                 ).out_dir / "trainable.safetensors")).values())


def test_float16_on_the_wire(tmp_path, tiny):
    r32 = run(tmp_path, tiny, "a", **{"method.name": "full"})
    r16 = run(tmp_path, tiny, "b", **{"method.name": "full", "comm.dtype": "float16"})
    assert r16.final["bytes_total"] < 0.6 * r32.final["bytes_total"]


def test_lora_export_loads_on_the_plain_backbone_with_peft_and_gives_the_same_logits(tmp_path, tiny):
    from peft import PeftModel
    from safetensors.torch import load_file

    from fedft.api import assemble, prepare
    from fedft.fl.loop import federated
    from fedft.models import Classifier, load_backbone

    exp = prepare(load_config(None, tiny(**{"method.name": "lora", "fl.lr": 0.05})))
    for _ in federated(assemble(exp).fed):
        pass
    meta = {"model": "tiny-bert", "model_source": "tiny-bert", "classes": ["a", "b", "c", "d"], "pooling": "mean"}
    files = exp.method.export(exp.model, tmp_path, meta)
    assert "adapter/adapter_model.safetensors" in files
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and w.abs().sum() > 0 for k, w in weights.items()), "LoRA B never trained"

    fresh = load_backbone(exp.config.model).model  # the plain backbone (seeded tiny BERT), no fedft classifier
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    head = load_file(str(tmp_path / "head.safetensors"))
    inputs, _ = exp.test.batch(list(range(8)))
    exp.model.eval()
    with torch.no_grad():
        hidden = loaded(**inputs).last_hidden_state
        m = inputs["attention_mask"].unsqueeze(-1).float()
        logits = ((hidden * m).sum(1) / m.sum(1)) @ head["weight"].T + head["bias"]
        assert torch.allclose(logits, exp.model(**inputs), atol=1e-5)
        untrained = Classifier(load_backbone(exp.config.model).model, 4, "mean", seed=123).eval()
        assert not torch.allclose(logits, untrained(**inputs), atol=1e-4)


def test_interrupted_run_keeps_finished_rounds(tmp_path, tiny, monkeypatch):
    import fedft.driver as api

    real = api.write_csv
    calls = []

    def stop_after_first(path, rounds):
        real(path, rounds)
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "write_csv", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, tiny, **{"method.name": "head"})
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["status"] == "interrupted" and len(data["rounds"]) == 1
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_personal_accuracy_weighs_per_class_accuracy_by_each_clients_label_shares():
    from fedft.tasks.classify import personal_accuracy

    right, seen = np.array([5, 0, 2]), np.array([5, 5, 4])  # per-class test accuracy 1, 0, 0.5
    shares = np.array([[1.0, 0, 0], [0, 0.5, 0.5], [0, 0, 0]])  # the third client holds no data
    assert personal_accuracy(right, seen, shares) == pytest.approx((1.0 + 0.25) / 2)
    assert personal_accuracy(right, np.array([5, 5, 0]), np.array([[0, 0.5, 0.5]])) == 0.0  # class 2 not tested


def test_local_only_is_also_scored_on_each_clients_own_label_distribution(tmp_path, tiny):
    """On the global test set a client that holds one label cannot score above that label's share; on a test set
    with its own label distribution it can: the local-only baseline reports both, and so does every mode."""
    skew = {"data.partition": "pathological", "data.classes_per_client": 1, "data.min_partition_size": 1,
            "fl.rounds": 3, "fl.lr": 1e-2}
    local = fedft.run(load_config(None, tiny(**skew, **{"fl.mode": "local"})), tmp_path / "local")
    last = local.rounds[-1]
    assert last["accuracy"] <= 0.26 and last["personal_accuracy"] >= last["accuracy"] + 0.5
    assert local.final["personal_accuracy"] == last["personal_accuracy"]
    fed = fedft.run(load_config(None, tiny(**skew)), tmp_path / "fed")
    assert fed.rounds[-1]["personal_accuracy"] is not None


@pytest.mark.parametrize("budget", ["examples", "steps"])
def test_central_baseline_matches_the_federated_examples_or_steps(tmp_path, tiny, monkeypatch, budget):
    """fl.central_budget: examples = the sampled clients' example-passes per round; steps = one mean client's
    optimizer steps per round (clients_per_round times fewer examples)."""
    import fedft.fl.loop as loop

    seen, real = [], loop.train_batches
    monkeypatch.setattr(loop, "train_batches", lambda m, p, d, batches, *a, **k: seen.append(
        [len(b) for b in batches]) or real(m, p, d, batches, *a, **k))
    config = load_config(None, tiny(**{"fl.mode": "central", "fl.central_budget": budget, "fl.rounds": 2,
                                       "fl.batch_size": 8}))
    fedft.run(config, tmp_path / "central")
    sizes = read_clients(tmp_path / "central")["rows"]
    mean, k = sum(sizes) / len(sizes), config.fl.clients_per_round
    want = round(mean * (k if budget == "examples" else 1))
    assert len(seen) == 2 and all(sum(r) == want * config.fl.local_epochs for r in seen)
    if budget == "steps":
        assert all(len(r) == -(-round(mean) // 8) * config.fl.local_epochs for r in seen)
