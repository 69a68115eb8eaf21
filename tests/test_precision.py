"""fl.precision: auto follows the processor (torch's own bf16 check, patched here both ways), the record and the
start line say what was used and why, features that need fp32 keep it, every method computes in bf16 when it is
used, batching works under CPU autocast, and a bf16 run resumes bit-identically."""
import json

import numpy as np
import pytest
import torch

import fedft
from fedft.api import prepare
from fedft.cli import main
from fedft.config import load_config
from fedft.fl.batched import train_batched
from fedft.fl.client import TrainConfig, client_seed, local_train, read_state
from fedft.fl import precision
from fedft.fl.precision import resolve
from fedft.methods import trainable_parameters
from test_batched import no_dropout
from test_methods import MODELS, OWN
from test_resume import _cut_after_two, same


def cpu_bf16(monkeypatch, native: bool, speedup: float = 1.8) -> None:
    """What torch's capability check says about this CPU's bf16 (AVX512-BF16, AMX), and how much faster its bf16
    matrix products were measured to be."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(precision, "bf16_speedup", lambda: speedup)


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpus_bf16_check_and_the_record_and_start_line_say_so(tmp_path, tiny, monkeypatch, native):
    cpu_bf16(monkeypatch, native)
    lines = []
    fedft.run(load_config(None, tiny(**{"fl.precision": "auto", "method.name": "bias"})), tmp_path / "run",
              log=lines.append)
    rec = json.loads((tmp_path / "run" / "results.json").read_text())["precision"]
    want = "bf16" if native else "fp32"
    assert rec["used"] == want
    assert rec["why"] == ("auto: CPU with native bf16 (avx512_bf16), 1.80x fp32's speed (measured here)" if native
                          else "auto: CPU without native bf16 (it would be emulated, slower)")
    start = [ln for ln in lines if ln.startswith("fedft: ")]
    assert len(start) == 1 and start[0].endswith(f"{want} ({rec['why']})"), lines


def test_native_bf16_that_is_measured_slower_keeps_fp32(monkeypatch, tmp_path):
    """Native support does not promise speed (an Intel Xeon here computes bf16 matrix products slower than fp32):
    auto picks bf16 only where it is also measured faster, and the measurement is kept per machine."""
    cpu_bf16(monkeypatch, True, speedup=0.71)
    p = resolve("auto", torch.device("cpu"))
    assert p.used == "fp32" and "0.71x fp32's speed" in p.why and "avx512_bf16" in p.why
    monkeypatch.undo()
    monkeypatch.setenv("FEDFT_CACHE", str(tmp_path))
    speed = precision.bf16_speedup()
    assert speed > 0 and json.loads((tmp_path / "precision.json").read_text()) == {
        f"{precision.cpu_name()}|{torch.__version__}|{torch.get_num_threads()} threads": speed}
    monkeypatch.setattr(torch, "randn", None)  # a second call measures nothing: it reads the kept figure
    assert precision.bf16_speedup() == speed


def test_amx_counts_as_native_and_a_gpu_without_bf16_keeps_fp32(monkeypatch):
    cpu_bf16(monkeypatch, False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve("auto", torch.device("cpu")).why == "auto: CPU with native bf16 (amx), 1.80x fp32's speed " \
                                                       "(measured here)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve("auto", torch.device("cuda")).used == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve("auto", torch.device("cuda")).used == "bf16"


def test_explicit_bf16_without_native_support_runs_with_one_warning(tmp_path, tiny, monkeypatch, capsys):
    cpu_bf16(monkeypatch, False)
    assert main(["run", "--quiet", "--out", str(tmp_path / "run"),
                 *[a for s in tiny(**{"fl.precision": "bf16", "fl.rounds": 1}) for a in ("--set", s)]]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and "emulated" in err[0] and "slower" in err[0], err
    rec = json.loads((tmp_path / "run" / "results.json").read_text())["precision"]
    assert rec["used"] == "bf16" and "emulated" in rec["why"]


def test_a_feature_or_method_that_needs_fp32_keeps_it_under_auto(tmp_path, tiny, monkeypatch):
    cpu_bf16(monkeypatch, True)
    dp = {"dp.mode": "sample", "dp.noise_multiplier": 1.0, "dp.clip": 1.0, "fl.batch_size": 8, "fl.rounds": 1,
          "fl.precision": "auto", "method.name": "bias"}
    fedft.run(load_config(None, tiny(**dp)), tmp_path / "dp")
    rec = json.loads((tmp_path / "dp" / "results.json").read_text())["precision"]
    assert rec == {"used": "fp32", "why": "auto: dp.mode = sample (Opacus' per-sample gradients need fp32)"}

    deep = {"method.name": "prompt", "method.deep": True}  # measured to lose accuracy in bf16 (precision study)
    exp = prepare(load_config(None, tiny(**deep, **{"fl.precision": "auto"})))
    assert exp.precision.used == "fp32" and exp.precision.why.startswith("auto: method.deep = true"), exp.precision
    exp = prepare(load_config(None, tiny(**deep, **{"fl.precision": "bf16"})))
    assert exp.precision.used == "bf16"  # asked for explicitly: honoured
    for shallow in ({"method.name": "prompt"}, {"method.name": "bias"}):
        exp = prepare(load_config(None, tiny(**shallow, **{"fl.precision": "auto"})))
        assert exp.precision.used == "bf16", shallow


def _one_round(tiny, tmp_path, name, **extra):
    return fedft.run(load_config(None, tiny(**{"fl.rounds": 1, "fl.lr": 1e-2, **extra})), tmp_path / name)


@pytest.mark.parametrize("extra", [
    {"method.name": "full"},
    {"method.name": "head"},  # the feature cache
    {"method.name": "bias"},
    {"method.name": "lora"},
    {"method.name": "dora"},
    {"method.name": "adapter"},
    {"method.name": "prompt"},
    {"method.name": "prompt", "method.deep": True},
    {"method.name": "layers", "method.select": "gradient", "method.budget_min": 1, "method.budget_max": 1},
    {"method.name": "bias", "fl.strategy": "scaffold", "fl.optimizer": "sgd"},
], ids=["full", "head", "bias", "lora", "dora", "adapter", "prompt", "prompt-deep", "layers", "scaffold"])
def test_every_method_trains_and_evaluates_in_bf16(tiny, tmp_path, extra):
    """bf16 is really used (the numbers move off fp32's), and stays close to fp32."""
    a = _one_round(tiny, tmp_path, "fp32", **extra, **{"fl.precision": "fp32"})
    b = _one_round(tiny, tmp_path, "bf16", **extra, **{"fl.precision": "bf16"})
    ra, rb = a.rounds[-1], b.rounds[-1]
    assert ra["train_loss"] != rb["train_loss"] and ra["loss"] != rb["loss"]
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=0.02)
    assert rb["loss"] == pytest.approx(ra["loss"], rel=0.02)
    if extra["method.name"] == "head":  # the features were computed in bf16 and are kept as fp32
        assert json.loads((tmp_path / "bf16" / "results.json").read_text())["feature_cache"]["enabled"]


def test_fedpft_distils_and_aligns_in_bf16(tiny, tmp_path, server_text):
    proxy = {"method.name": "lora", "proxy.kind": "fedpft", "proxy.keep_layers": [0], "proxy.ffn_neurons": 8,
             "proxy.distill_steps": 3, "proxy.align_every": 1, "proxy.align_steps": 2,
             "proxy.distill_data": f"file:{server_text}"}
    runs = {p: json.loads((_one_round(tiny, tmp_path, p, **proxy, **{"fl.precision": p, "fl.rounds": 2}).out_dir /
                           "results.json").read_text()) for p in ("fp32", "bf16")}
    d32, d16 = runs["fp32"]["proxy"]["distill"], runs["bf16"]["proxy"]["distill"]
    assert (d32["precision"], d16["precision"]) == ("fp32", "bf16")
    assert d16["loss_before"] != d32["loss_before"]
    assert d16["loss_before"] == pytest.approx(d32["loss_before"], rel=0.05)
    a32, a16 = runs["fp32"]["proxy"]["alignments"][0], runs["bf16"]["proxy"]["alignments"][0]
    assert a16["loss_after"] != a32["loss_after"] and a16["loss_after"] == pytest.approx(a32["loss_after"], rel=0.1)


BF16_CASES = [(m, "lora") for m in sorted(MODELS)] + [("tiny-bert", m) for m in sorted(OWN) if m != "lora"]


@pytest.mark.parametrize("model,method", BF16_CASES)
def test_batched_clients_under_cpu_bf16_match_one_by_one(tiny, model, method):
    """Cross-client batching (vmap) under CPU bf16 autocast trains as one client after another does, up to bf16
    rounding: the same training losses to 0.5% and updates pointing the same way."""
    exp = prepare(load_config(None, tiny(**{**MODELS[model], "model.name": model, "method.name": method})))
    no_dropout(exp.model)
    b = exp.config.fl.batch_size
    pool = np.arange(len(exp.train))
    clients = [pool[: 2 * b + 3], pool[b: b + 5]]
    cfg = TrainConfig(epochs=2, batch_size=b, lr=1e-2, weight_decay=0.01, group_by_length=True, precision="bf16")
    start = read_state(exp.params)
    seeds = [client_seed(0, 1, c) for c in range(len(clients))]
    one = [local_train(exp.model, exp.params, start, exp.train, idx, cfg, s) for idx, s in zip(clients, seeds)]
    batched = train_batched(exp.model, exp.params, [start] * len(clients), exp.train, clients, cfg, seeds)
    for u, v in zip(one, batched):
        assert v.loss == pytest.approx(u.loss, rel=5e-3)
        du = torch.cat([(u.state[k] - start[k]).flatten() for k in start])
        dv = torch.cat([(v.state[k] - start[k]).flatten() for k in start])
        assert float(torch.nn.functional.cosine_similarity(du, dv, dim=0)) > 0.9


def test_a_run_with_batched_clients_in_bf16_completes(tmp_path, tiny):
    seq = _one_round(tiny, tmp_path, "seq", **{"fl.precision": "bf16", "fl.parallel_clients": 1, "fl.rounds": 2})
    par = _one_round(tiny, tmp_path, "par", **{"fl.precision": "bf16", "fl.parallel_clients": 2, "fl.rounds": 2})
    assert par.final["accuracy"] is not None
    assert par.rounds[-1]["train_loss"] == pytest.approx(seq.rounds[-1]["train_loss"], rel=0.02)


def test_resume_of_a_bf16_run_is_bit_identical(tmp_path, tiny):
    sets = tiny(**{"method.name": "lora", "fl.rounds": 4, "fl.precision": "bf16"})
    fedft.run(load_config(None, sets), tmp_path / "whole")
    cut = _cut_after_two(tmp_path, sets)
    assert main(["run", "--quiet", "--resume", str(cut)]) == 0
    same(tmp_path / "whole", cut)
    assert json.loads((cut / "results.json").read_text())["precision"]["used"] == "bf16"


def test_resumed_on_a_machine_that_resolves_auto_otherwise_the_record_keeps_both(tmp_path, tiny, monkeypatch):
    cpu_bf16(monkeypatch, True)
    cut = _cut_after_two(tmp_path, tiny(**{"method.name": "bias", "fl.rounds": 3, "fl.precision": "auto"}))
    cpu_bf16(monkeypatch, False)
    assert main(["run", "--quiet", "--resume", str(cut)]) == 0
    rec = json.loads((cut / "results.json").read_text())
    assert rec["status"] == "completed" and rec["precision"]["used"] == "fp32"
    assert rec["precision"]["before_resume"]["used"] == "bf16"


def test_the_feature_cache_computes_the_backbone_in_the_runs_precision(tiny):
    from fedft.fl.cache import FeatureCache

    exp = prepare(load_config(None, tiny(**{"method.name": "head"})))
    f32, f16 = (FeatureCache(exp.model, exp.test, precision=p).batch(np.arange(8))[0]["features"]
                for p in ("fp32", "bf16"))
    assert f16.dtype == torch.float32 and not torch.equal(f16, f32)
    torch.testing.assert_close(f16, f32, atol=0.05, rtol=0.05)


def test_a_flower_node_resolves_auto_on_its_own_machine(tiny, monkeypatch):
    import fedft.fl.client as client
    from fedft.deploy.app import prepare_node

    node = prepare_node(load_config(None, tiny(**{"fl.precision": "auto", "method.name": "bias"})), "")
    node.cid = 0
    start = read_state(trainable_parameters(node.model))
    seen, real = [], client.autocast
    monkeypatch.setattr(client, "autocast", lambda device, p: seen.append(p) or real(device, p))
    for native, want in ((True, "bf16"), (False, "fp32")):
        cpu_bf16(monkeypatch, native)
        seen.clear()
        node.local_update(start, 1)
        assert seen and set(seen) == {want}


@pytest.mark.parametrize("method", ["lora", "dora", "bias", "layers", "full"])
def test_frozen_weights_cast_once_give_plain_autocasts_results_bit_for_bit(tmp_path, tiny, monkeypatch, method):
    """fl/precision.lowered (each frozen weight's bf16 copy made once) changes the speed, not one bit of a bf16 run:
    the same run with plain autocast (lowered made a no-op) saves the same weights and records the same rounds."""
    sets = tiny(**{"method.name": method, "fl.rounds": 2, "fl.precision": "bf16"})
    fedft.run(load_config(None, sets), tmp_path / "lowered")
    from contextlib import nullcontext

    from fedft.fl import client

    monkeypatch.setattr(client, "lowered", lambda *a, **k: nullcontext())
    monkeypatch.setattr(precision, "lowered", lambda *a, **k: nullcontext())
    fedft.run(load_config(None, sets), tmp_path / "plain")
    same(tmp_path / "lowered", tmp_path / "plain")


def test_lowered_uses_a_bf16_copy_only_inside_and_remakes_it_when_the_weight_changes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = lin(x)
        with precision.lowered(lin, "bf16"):
            assert "forward" in vars(lin) and lin.weight.dtype == torch.float32  # module.weight: still fp32
            assert torch.equal(lin(x), want)
            first = precision._low(lin.weight)
        assert "forward" not in vars(lin)
        with torch.no_grad():
            lin.weight.mul_(2)  # the weight changed: its old copy is stale
        with precision.lowered(lin, "bf16"):
            assert precision._low(lin.weight) is not first
            assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    with precision.lowered(lin, "fp32"):  # fp32: nothing changes
        assert "forward" not in vars(lin)
