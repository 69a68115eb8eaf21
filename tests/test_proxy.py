"""FedPFT / FedOT: sub-model construction, alignment, plugging the trained parameters back into the full model."""
import json

import numpy as np
import pytest
import torch

from fedft.api import prepare, run
from fedft.cli import main
from fedft.config import load_config
from fedft.errors import UsageError
from fedft.fl.evaluate import evaluate
from fedft.models import tiny as tiny_models
from fedft.models.arch import transformer_layers
from fedft.proxy.build import build_sub_fm, ffn_pair, load_proxy, saliency, save_proxy
from fedft.proxy.distill import distill, most_active, neuron_masks


@pytest.fixture
def proxied(tiny, server_text):
    """A config for a tiny BERT whose layer 1 FFN is cut to 8 of 64 neurons; the server's unlabelled alignment
    texts are its own (server_text)."""
    def make(**extra):
        base = {"proxy.kind": "fedpft", "proxy.keep_layers": [0], "proxy.ffn_neurons": 8, "proxy.distill_steps": 0,
                "proxy.distill_data": f"file:{server_text}"}
        base.update(extra)
        return load_config(None, tiny(**base))
    return make


def tiny_model(name):
    return tiny_models.tiny_bert(100) if name == "bert" else tiny_models.tiny_vit() if name == "vit" \
        else tiny_models.tiny_dinov2()


def inputs_for(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model.config.model_type == "bert":
        return {"input_ids": torch.randint(0, 100, (3, 7), generator=g), "attention_mask": torch.ones(3, 7).long()}
    return {"pixel_values": torch.randn(3, 3, 28, 28, generator=g)}


@pytest.mark.parametrize("name", ["bert", "vit", "dinov2"])
def test_sub_model_keeps_the_most_salient_neurons_in_order(name):
    full = tiny_model(name)
    sub, info = build_sub_fm(full, "fedpft", keep_layers=[0], ffn_neurons=16)
    assert sorted(info.neurons) == [1] and info.ffn_width == 64
    mt = full.config.model_type
    f_in, f_out = ffn_pair(transformer_layers(full)[1], mt)
    s_in, s_out = ffn_pair(transformer_layers(sub)[1], mt)
    assert tuple(s_in.weight.shape) == (16, 32) and tuple(s_out.weight.shape) == (32, 16)
    scores = saliency(f_in.weight, f_out.weight)
    kept = info.neurons[1]
    assert kept == sorted(kept) and len(kept) == 16
    assert set(kept) == set(torch.topk(scores, 16).indices.tolist())  # the highest-saliency ones
    assert scores[kept].min() >= scores[[j for j in range(64) if j not in kept]].max()
    assert torch.equal(s_in.weight, f_in.weight[kept]) and torch.equal(s_in.bias, f_in.bias[kept])
    assert torch.equal(s_out.weight, f_out.weight[:, kept]) and torch.equal(s_out.bias, f_out.bias)
    # layer 0 kept whole, attention untouched, the full model left as it was
    assert ffn_pair(transformer_layers(sub)[0], mt)[0].weight.shape == (64, 32)
    assert f_in.weight.shape == (64, 32)
    assert info.sub_params == info.full_params - 2 * 48 * 32 - 48


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_full_width_sub_model_equals_the_full_model(name):
    full = tiny_model(name)
    sub, _ = build_sub_fm(full, "fedpft", keep_layers=[], ffn_neurons=64)
    x = inputs_for(full)
    with torch.no_grad():
        assert torch.allclose(sub(**x).last_hidden_state, full(**x).last_hidden_state, atol=1e-6)


@pytest.mark.parametrize("name, kind", [("bert", "fedpft"), ("vit", "fedpft"), ("dinov2", "fedpft"),
                                        ("dinov2", "fedot"), ("vit", "fedot")])
def test_saved_sub_model_loads_back_identical(tmp_path, name, kind):
    full = tiny_model(name)
    sub, info = build_sub_fm(full, kind, keep_layers=[0], ffn_neurons=8 if kind == "fedpft" else 0,
                             drop_layers=[1] if kind == "fedot" else None)
    save_proxy(sub, info, tmp_path / "p")
    loaded, info2 = load_proxy(tmp_path / "p")
    assert info2 == info
    x = inputs_for(full)
    with torch.no_grad():
        assert torch.equal(loaded(**x).last_hidden_state, sub(**x).last_hidden_state)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "proxy.json").write_text("{}")
    with pytest.raises(UsageError, match="not a valid sub-model description"):
        load_proxy(tmp_path / "bad")
    with pytest.raises(UsageError, match="already exists"):
        save_proxy(sub, info, tmp_path / "p")


def test_fedot_drops_layers_and_maps_the_rest(proxied):
    full = tiny_model("bert")
    sub, info = build_sub_fm(full, "fedot", keep_layers=[1], drop_layers=[0])
    assert info.layer_map == [1] and len(transformer_layers(sub)) == 1 and sub.config.num_hidden_layers == 1
    exp = prepare(proxied(**{"proxy.kind": "fedot", "proxy.keep_layers": [1], "proxy.drop_layers": [0],
                             "proxy.ffn_neurons": 0}))
    lora = {k: v for k, v in exp.proxy.mapping.items() if "lora_" in k}
    assert lora and all(".layer.0." in k and v == k.replace(".layer.0.", ".layer.1.") for k, v in lora.items())
    torch.manual_seed(0)
    with torch.no_grad():
        for p in exp.params.values():
            p.add_(torch.randn_like(p))
    exp.proxy.plug(exp.params)
    hidden = torch.randn(2, 5, 32)
    sub_attn = transformer_layers(exp.proxy.student)[0].attention.eval()
    full_attn = transformer_layers(exp.proxy.teacher)[1].attention.eval()
    with torch.no_grad():
        assert torch.equal(sub_attn(hidden)[0], full_attn(hidden)[0])  # sub layer 0 is full layer 1, LoRA and all


class Tokens:
    """Unlabelled token sequences, as the server's alignment data."""
    def __init__(self, n=256, length=8, seed=0):
        self.ids = torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def batch(self, idx):
        ids = self.ids[torch.as_tensor(idx)]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, None


def test_distillation_lowers_the_alignment_loss():
    full = tiny_model("bert")
    with torch.no_grad():  # make the FFNs matter (at init they barely move the residual stream)
        for layer in transformer_layers(full):
            for lin in ffn_pair(layer, "bert"):
                lin.weight.mul_(20)
    student, info = build_sub_fm(full, "fedpft", keep_layers=[0], ffn_neurons=8)
    for p in student.parameters():
        p.requires_grad_(False)  # as in a run: the backbone is frozen; distillation must leave it so
    flags = [p.requires_grad for p in student.parameters()]
    frozen = {n: p.detach().clone() for n, p in student.named_parameters()
              if not n.startswith(("encoder.layer.1.intermediate.dense", "encoder.layer.1.output.dense"))}
    result = distill(full, student, info, Tokens(), steps=60, lr=1e-3, batch_size=32, seed=0)
    assert result["loss_after"] < 0.9 * result["loss_before"]
    assert [p.requires_grad for p in student.parameters()] == flags and not any(flags)  # as they were
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)  # only the FFN moved


def test_plugged_lora_gives_the_sub_models_attention_outputs(proxied):
    exp = prepare(proxied())
    torch.manual_seed(1)
    with torch.no_grad():
        for p in exp.params.values():
            p.add_(torch.randn_like(p) * 0.1)  # trained-looking LoRA B, A and head
    exp.proxy.plug(exp.params)
    hidden = torch.randn(2, 5, 32)
    sub_attn = transformer_layers(exp.proxy.student)[1].attention
    full_attn = transformer_layers(exp.proxy.teacher)[1].attention
    sub_attn.eval(), full_attn.eval()
    with torch.no_grad():
        assert torch.equal(sub_attn(hidden)[0], full_attn(hidden)[0])
        # and the LoRA really acts: the unplugged full model's pre-trained attention differs
        q = transformer_layers(exp.proxy.teacher)[1].attention.self.query
        assert not torch.equal(q(hidden), q.base_layer(hidden))


@pytest.mark.parametrize("method", ["bias", "full"])
def test_a_method_that_cannot_be_plugged_back_is_refused(proxied, method):
    with pytest.raises(UsageError, match="cannot be plugged back"):
        prepare(proxied(**{"method.name": method}))


def test_neuron_alignment_moves_only_the_unfrozen_neurons(proxied):
    exp = prepare(proxied())
    proxy = exp.proxy
    stats = proxy.client_stats(exp.model, exp.train, np.arange(40), 16)
    # mean |activation| per neuron equals a direct computation on the same examples
    acts = []
    w_out = ffn_pair(transformer_layers(proxy.student)[1], "bert")[1]
    h = w_out.register_forward_pre_hook(lambda m, a: acts.append(a[0].detach()))
    with torch.no_grad():
        exp.model.eval()
        for i in range(0, 40, 16):
            inputs, _ = exp.train.batch(np.arange(40)[i: i + 16])
            exp.model(**inputs)
            acts[-1] = acts[-1][inputs["attention_mask"].bool()]
    h.remove()
    direct = torch.cat(acts).abs().mean(0).double()
    assert torch.allclose(stats.activity("mean_abs")[1], direct, atol=1e-6)
    frozen = most_active(stats.activity("mean_abs"), 0.5)
    assert int(frozen[1].sum()) == 4 and bool((direct[frozen[1]].min() >= direct[~frozen[1]].max()))
    w_in = ffn_pair(transformer_layers(proxy.student)[1], "bert")[0]
    before_in, before_out = w_in.weight.detach().clone(), w_out.weight.detach().clone()
    before_bias, before_in_bias = w_out.bias.detach().clone(), w_in.bias.detach().clone()
    distill(proxy.teacher, proxy.student, proxy.info, proxy.data, 10, 1e-2, 16, 0,
            masks=neuron_masks(proxy.student, proxy.info, frozen))
    keep = frozen[1]
    assert torch.equal(w_in.weight[keep], before_in[keep]) and torch.equal(w_out.weight[:, keep], before_out[:, keep])
    assert torch.equal(w_out.bias, before_bias) and torch.equal(w_in.bias[keep], before_in_bias[keep])
    assert not torch.equal(w_in.weight[~keep], before_in[~keep])


def test_proxy_run_reports_full_and_sub_accuracy_and_counts_alignment_bytes(proxied, tmp_path):
    config = proxied(**{"proxy.distill_steps": 5, "proxy.align_every": 2, "proxy.align_steps": 3, "fl.rounds": 3})
    result = run(config, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    r1, r2, r3 = record["rounds"]
    assert all(r["proxy_accuracy"] is not None for r in (r1, r2, r3))
    assert record["proxy"]["distill"]["steps"] == 5 and len(record["proxy"]["alignments"]) == 1
    stats_bytes = 8 * 8 + 8  # 8 neurons x (|a| sum, zeros) per compressed layer, + a count
    assert r2["bytes_up"] - r1["bytes_up"] == stats_bytes * r2["returned"]
    assert r1["bytes_down"] == r2["bytes_down"]  # the new FFN weights are owed from round 3 on
    exp = prepare(config)
    ffn = exp.proxy.ffn_bytes()
    fresh = [c for c in r3["clients"]]  # every client sampled in round 3 is behind the round-2 alignment
    assert r3["bytes_down"] - r1["bytes_down"] == ffn * len(fresh)
    assert result.final["full_model_params"] > result.final["total_params"]
    # the reported figures are the full model's with the final parameters (exported as a PEFT adapter of the
    # plain full backbone, and the head) plugged in
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    lora = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    head = load_file(str(tmp_path / "run" / "head.safetensors"))
    state = {k.replace("base_model.model.", "base_model.model.backbone.", 1): v for k, v in lora.items()}
    state.update({f"base_model.model.head.{k}": v for k, v in head.items()})
    set_peft_model_state_dict(exp.proxy.full, state)
    acc, loss = evaluate(exp.proxy.full, exp.proxy.test)
    assert acc == pytest.approx(record["final"]["accuracy"]) and loss == pytest.approx(record["final"]["loss"], 1e-5)
    assert r3["loss"] != r3["proxy_loss"]  # and those are not the sub-model's


def test_no_alignment_after_the_last_round_and_its_compute_is_counted(proxied, tmp_path):
    """A re-alignment after the last aggregation changes nothing the full model is scored with: it is skipped,
    and what the alignments did cost (steps, seconds) is in the results."""
    result = run(proxied(**{"proxy.align_every": 1, "proxy.align_steps": 2, "fl.rounds": 3}), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [a["round"] for a in record["proxy"]["alignments"]] == [1, 2]
    assert result.final["alignment_steps"] == 4
    assert result.final["alignment_seconds"] > 0 and all(a["seconds"] >= 0 for a in record["proxy"]["alignments"])


def test_owed_bytes_go_to_each_client_once_per_alignment(proxied):
    exp = prepare(proxied())
    proxy = exp.proxy
    assert proxy.owed([0, 1]) == 0
    proxy.version += 1
    one = proxy.ffn_bytes()
    weights = 4 * (8 * 32 + 8 + 32 * 8 + 32)  # layer 1's W_in, its bias, W_out, its bias at float32
    assert weights <= one < weights + 1024  # plus the encoding's small header
    assert proxy.owed([0, 1]) == 2 * one and proxy.owed([1, 2]) == one and proxy.owed([0, 1, 2]) == 0


@pytest.mark.parametrize("args, message", [
    (["--model", "tiny-bert", "--keep-layers", "0,7"], "out of range"),
    (["--model", "tiny-bert", "--keep-layers", "0", "--ffn-neurons", "65"], "between 1 and the FFN width 64"),
    (["--model", "tiny-bert", "--ffn-neurons", "0"], "between 1 and the FFN width"),
    (["--model", "tiny-clip"], "a sub-model can be made of"),
    (["--model", "tiny-bert"], "keeps all 2 layers whole"),  # the default first and last: nothing to compress
    (["--model", "tiny-bert", "--keep-layers=--1"], "must be layer numbers"),
    (["--model", "tiny-bert", "--kind", "fedot", "--keep-layers", "1"], "nothing to drop"),
])
def test_bad_proxy_build_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["proxy", "build", *args, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


def test_proxy_build_writes_a_folder_a_run_can_use(tmp_path, proxied, text_csv):
    assert main(["proxy", "build", "--model", "tiny-bert", "--keep-layers", "0", "--ffn-neurons", "8",
                 "--distill-data", f"file:{text_csv}", "--distill-steps", "3", "--out", str(tmp_path / "p")]) == 0
    info = json.loads((tmp_path / "p" / "proxy.json").read_text())
    assert info["distill"]["steps"] == 3 and info["neurons"]["1"] and (tmp_path / "p" / "tokenizer.json").exists()
    exp = prepare(proxied(**{"proxy.path": str(tmp_path / "p"), "proxy.keep_layers": [0, -1], "proxy.ffn_neurons": 0,
                             "proxy.distill_steps": 200}))  # the defaults: the folder brings its own
    assert ffn_pair(transformer_layers(exp.proxy.student)[1], "bert")[0].out_features == 8


@pytest.mark.parametrize("setting, message", [
    ({"proxy.kind": "none", "proxy.path": "x"}, "but proxy.kind = 'none'"),
    ({"proxy.kind": "fedot", "proxy.ffn_neurons": 8}, "proxy.ffn_neurons is a fedpft setting"),
    ({"fl.mode": "central"}, "needs fl.mode = 'federated'"),
    ({"dp.mode": "client", "proxy.align_every": 1}, "outside the privacy accounting"),
    ({"proxy.kind": "none", "proxy.ffn_neurons": 0}, "proxy.keep_layers is set but proxy.kind = 'none'"),
    ({"proxy.path": "x"}, "proxy.keep_layers has no effect with proxy.path"),
    ({"method.name": "prompt", "method.deep": True}, "per-layer prompts cannot be aligned"),
])
def test_contradictory_proxy_settings_are_refused(proxied, setting, message):
    with pytest.raises(UsageError, match=message):
        proxied(**setting)


def _image_bytes(split) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


@pytest.mark.parametrize("data, source, test_in_source", [
    ("fashion-mnist", "fashion-mnist", False),  # the test images come from Fashion-MNIST's own test file
    ("digits", "digits", True), ("digits", "auto", True)])
def test_the_servers_images_are_none_of_the_clients_or_test_images(data, source, test_in_source):
    """By example identity (pixels): a source that is the run's own data set gives the server only the images the
    run does not use (before, fashion-mnist's seeded split handed it the clients' first images)."""
    from fedft.config import DataConfig
    from fedft.data import load_dataset
    from fedft.proxy.server_data import server_pool

    train, test = load_dataset(DataConfig(name=data, train_per_class=50, test_per_class=20))
    pool = server_pool(source, "image", held=(train, test), limit=5000)
    got = [img.numpy().tobytes() for img in pool.raw.images]
    assert len(got) >= 8 and not set(got) & (_image_bytes(train) | _image_bytes(test))
    in_source = len(train.images) + (len(test.images) if test_in_source else 0)
    assert in_source - 10 <= pool.left_out  # every run image of the source left out (and its few exact repeats)
    assert pool.describe()["data"] == data and pool.describe()["examples"] == len(got)


def test_the_servers_texts_are_none_of_the_clients_or_test_texts(tmp_path, text_csv, tiny):
    """A distillation file that shares lines with the clients' CSV: the shared lines are left out, by identity, and
    results.json records the server's data and how many of its examples were left out."""
    from fedft.data import load_dataset
    from fedft.proxy.server_data import server_pool

    config = load_config(None, tiny())
    train, test = load_dataset(config.data)
    mixed = tmp_path / "server.txt"
    own = sorted(set(train.texts))[:30]
    mixed.write_text("\n".join(own + [f"a line of the server's own number {i}" for i in range(40)]) + "\n")
    pool = server_pool(f"file:{mixed}", "text", held=(train, test))
    assert not set(pool.raw.texts) & (set(train.texts) | set(test.texts))
    assert pool.left_out == 30 and len(pool.raw.texts) == 40

    res = run(load_config(None, tiny(**{"proxy.kind": "fedpft", "proxy.keep_layers": [0], "proxy.ffn_neurons": 8,
                                        "proxy.distill_steps": 2, "proxy.distill_data": f"file:{mixed}",
                                        "fl.rounds": 1})), tmp_path / "run")
    record = json.loads((res.out_dir / "results.json").read_text())["proxy"]["server_data"]
    assert record == {"data": f"file:{mixed}", "examples": 40, "left_out_as_run_data": 30}


def test_a_source_with_nothing_left_once_the_runs_data_is_out_is_refused(tiny, tmp_path):
    from fedft.data import load_dataset

    train, test = load_dataset(load_config(None, tiny()).data)
    (tmp_path / "same.txt").write_text("\n".join(train.texts + test.texts) + "\n")  # the clients' own texts
    with pytest.raises(UsageError, match="left once those identical to the run's own"):
        prepare(load_config(None, tiny(**{"proxy.kind": "fedpft", "proxy.keep_layers": [0], "proxy.ffn_neurons": 8,
                                          "proxy.distill_data": f"file:{tmp_path / 'same.txt'}"})))
