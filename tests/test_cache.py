"""Frozen-feature caching for `head`: the same logits and runs as without it, rebuilt when the backbone changes."""
import json

import numpy as np
import pytest
import torch

from fedft.api import prepare, run
from fedft.config import load_config
from fedft.fl.cache import FeatureCache, cacheable
from test_methods import MODELS


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-dinov2"])
def test_cached_logits_equal_the_model(tiny, model):
    exp = prepare(load_config(None, tiny(**MODELS[model], **{"model.name": model, "method.name": "head"})))
    assert cacheable(exp.model)
    cache = FeatureCache(exp.model, exp.train, batch_size=7)
    idx = np.array([5, 0, len(exp.train) - 1, 3])
    exp.model.train()  # a frozen backbone stays in eval mode: no dropout, so the features are fixed
    inputs, labels = exp.train.batch(idx)
    cached_inputs, cached_labels = cache.batch(idx)
    with torch.no_grad():
        torch.testing.assert_close(exp.model(**cached_inputs), exp.model(**inputs), atol=1e-5, rtol=1e-5)
    assert torch.equal(cached_labels, labels)
    assert cache.nbytes == len(exp.train) * exp.model.head.in_features * 4


def test_cache_is_rebuilt_when_the_frozen_backbone_changes(tiny):
    exp = prepare(load_config(None, tiny(**{"method.name": "head"})))
    cache = FeatureCache(exp.model, exp.train)
    idx = np.arange(6)
    before = cache.batch(idx)[0]["features"].clone()
    assert torch.equal(cache.batch(idx)[0]["features"], before)  # reused
    with torch.no_grad():
        exp.model.backbone.embeddings.word_embeddings.weight.mul_(2.0)  # in place
    changed = cache.batch(idx)[0]["features"]
    assert not torch.allclose(changed, before)
    with torch.no_grad():
        torch.testing.assert_close(changed, exp.model.eval().features(**exp.train.batch(idx)[0]))
    layer = exp.model.backbone.encoder.layer[0].output.dense
    layer.weight = torch.nn.Parameter(layer.weight.detach() * 0.5, requires_grad=False)  # replaced
    assert not torch.allclose(cache.batch(idx)[0]["features"], changed)


def test_only_head_training_is_cached(tiny):
    for method, expected in [("head", True), ("bias", False), ("lora", False), ("prompt", False)]:
        exp = prepare(load_config(None, tiny(**{"method.name": method})))
        assert cacheable(exp.model) is expected, method


def test_head_run_is_the_same_with_and_without_the_cache(tiny, tmp_path):
    cfg = {"method.name": "head", "fl.rounds": 3}
    on = run(load_config(None, tiny(**cfg)), tmp_path / "on")
    off = run(load_config(None, tiny(**cfg, **{"fl.feature_cache": False})), tmp_path / "off")
    for a, b in zip(on.rounds, off.rounds):
        assert a["clients"] == b["clients"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"])
    record = json.loads((tmp_path / "on" / "results.json").read_text())
    n = record["num_train"] + record["num_test"]
    assert record["feature_cache"] == {"enabled": True, "bytes": n * 32 * 4}  # tiny-bert: hidden 32
    assert json.loads((tmp_path / "off" / "results.json").read_text())["feature_cache"] is None


def test_cache_over_its_budget_is_not_built(tiny, tmp_path):
    res = run(load_config(None, tiny(**{"method.name": "head", "fl.rounds": 1, "fl.cache_mb": 0})), tmp_path / "r")
    record = json.loads((res.out_dir / "results.json").read_text())
    assert record["feature_cache"]["enabled"] is False and record["status"] == "completed"
