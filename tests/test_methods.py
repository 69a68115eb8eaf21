"""Every method on a tiny real BERT: one federated round changes only the method's parameters."""
import numpy as np
import pytest
import torch
from safetensors.torch import save

from fedft.api import prepare
from fedft.config import load_config
from fedft.fl import comm
from fedft.fl.loop import federated
from fedft.driver import assemble
from fedft.methods import METHODS
from fedft.methods.base import frozen_snapshot

# What each method may train (by parameter name) and must train.
OWN = {
    "full": lambda n: True,
    "head": lambda n: ".head." in f".{n}" and "lora" not in n,
    "bias": lambda n: n.endswith(".bias") or n.startswith("head."),  # every bias of the backbone, checked below
    "lora": lambda n: "lora_" in n or "modules_to_save" in n,
    "dora": lambda n: "lora_" in n or "modules_to_save" in n,  # lora_A, lora_B and lora_magnitude_vector
    "lora_sb": lambda n: n.endswith(".sb.R") or n.startswith("head."),  # R between the fixed B and A
    "adapter": lambda n: ".adapter." in n or n.startswith("head."),
    "prompt": lambda n: n.startswith(("prompt.", "head.")),
    "layers": lambda n: "embeddings" not in n and "pre_layrnorm" not in n,  # inner full; per-client masks: test_layers
}


IMAGE = {"data.name": "digits", "data.image_size": 28, "data.train_per_class": 12, "data.test_per_class": 5,
         "fl.batch_size": 8}
MODELS = {"tiny-bert": {}, "tiny-vit": IMAGE, "tiny-dinov2": IMAGE, "tiny-clip": IMAGE}


def one_round(tiny, method, model="tiny-bert", **extra):
    extra = {**MODELS[model], "model.name": model, **extra}
    exp = prepare(load_config(None, tiny(**{"method.name": method, "fl.rounds": 1, "fl.lr": 1e-2}, **extra)))
    return exp, assemble(exp).fed


def test_every_method_is_in_the_matrix():
    assert set(METHODS.names()) == set(OWN)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(OWN))
def test_round_changes_only_the_methods_parameters(tiny, method, model):
    exp, setup = one_round(tiny, method, model)
    assert exp.params and all(OWN[method](n) for n in exp.params), list(exp.params)
    if method == "bias":
        assert {n for n, _ in exp.model.named_parameters() if n.endswith(".bias")} <= set(exp.params)
    frozen = frozen_snapshot(exp.model)
    before = {k: p.detach().clone() for k, p in exp.params.items()}
    row = next(federated(setup))
    after = frozen_snapshot(exp.model)
    assert frozen.keys() == after.keys()
    for k in frozen:
        assert torch.equal(frozen[k], after[k]), f"frozen {k} changed"
    changed = [k for k, p in exp.params.items() if not torch.equal(before[k], p.detach())]
    assert changed, "no trainable parameter changed"
    if method in ("head", "prompt"):
        assert all(k in changed for k in exp.params), "every trained tensor should move"
    # payload bytes are the serialised trainable tensors, once per sampled client each way
    payload = len(save({k: p.detach().contiguous() for k, p in exp.params.items()}))
    reports = 4 * 2 * len(row.clients) if method == "layers" else 0  # gradient selection: 2 layers' importance
    basis = next((h for h in setup.hooks if type(h).__name__ == "Basis"), None)  # lora_sb: the initialisation
    init_up, basis_down = (basis.up, basis.down) if basis else (0, 0)
    assert row.bytes_down == (payload + basis_down) * len(row.clients)
    assert row.bytes_up == payload * len(row.clients) + reports + init_up


def test_payload_dtype_halves_bytes(tiny):
    exp, _ = one_round(tiny, "bias")
    state = {k: p.detach() for k, p in exp.params.items()}
    b32, b16 = len(comm.encode(state, "float32")), len(comm.encode(state, "float16"))
    n = sum(p.numel() for p in state.values())
    body = lambda payload: len(payload) - 8 - int.from_bytes(payload[:8], "little")  # noqa: E731 (safetensors layout)
    assert body(comm.encode(state, "float32")) == 4 * n and body(comm.encode(state, "float16")) == 2 * n
    assert b16 < b32
    assert comm.decode(comm.encode(state, "float16"))[next(iter(state))].dtype == torch.float32


def test_adapter_starts_as_identity(tiny):
    base, _ = one_round(tiny, "head")
    adapted, _ = one_round(tiny, "adapter")
    inputs, _ = base.test.batch(np.arange(8))
    base.model.eval(), adapted.model.eval()
    with torch.no_grad():
        assert torch.allclose(base.model(**inputs), adapted.model(**inputs), atol=1e-6)


def test_deep_prompt_acts_at_every_layer(tiny):
    exp, _ = one_round(tiny, "prompt", **{"method.deep": True, "method.prompt_length": 3})
    tokens = exp.model.prompt.tokens
    assert tuple(tokens.shape) == (2, 3, 32)  # one set per layer of the 2-layer tiny BERT
    inputs, _ = exp.test.batch(np.arange(4))
    exp.model.eval()
    with torch.no_grad():
        ref = exp.model(**inputs)
        tokens[1].add_(1.0)  # the second layer's prompts: only a deep prompt reads them
        assert not torch.allclose(ref, exp.model(**inputs))
    shallow, _ = one_round(tiny, "prompt", **{"method.prompt_length": 3})
    assert tuple(shallow.model.prompt.tokens.shape) == (1, 3, 32)


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("model", ["tiny-bert", "tiny-vit"])
def test_prompt_outputs_are_never_pooled(tiny, model, deep):
    """VPT: the prompt tokens' outputs (positions 1..P) do not enter the mean-pooled feature; real tokens do."""
    exp, _ = one_round(tiny, "prompt", model, **{"method.deep": deep, "method.prompt_length": 3})
    inputs, _ = exp.test.batch(np.arange(4))
    exp.model.eval()
    shift = {"at": None}

    def perturb(module, args, out):
        if shift["at"] is not None:
            h = out.last_hidden_state.clone()
            h[:, shift["at"]] += 100.0
            out.last_hidden_state = h
        return out

    exp.model.backbone.register_forward_hook(perturb)
    with torch.no_grad():
        ref = exp.model.features(**inputs)
        shift["at"] = slice(1, 4)  # the prompts' outputs
        torch.testing.assert_close(exp.model.features(**inputs), ref)
        shift["at"] = slice(4, 5)  # the first real token or patch after them
        assert not torch.allclose(exp.model.features(**inputs), ref)


def test_lora_targets_can_be_chosen_and_bad_ones_are_refused(tiny):
    from fedft.errors import UsageError

    exp, _ = one_round(tiny, "lora", **{"method.targets": "query,key,value", "method.rank": 2})
    assert any(".key.lora_A" in n for n in exp.params) and all(
        "lora_A.default.weight" not in n or exp.params[n].shape[0] == 2 for n in exp.params)
    with pytest.raises(UsageError, match="method.targets"):
        one_round(tiny, "lora", **{"method.targets": "nonexistent"})
