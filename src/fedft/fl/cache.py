"""Frozen-feature caching: where every client trains only the head over a frozen backbone (method `head`),
the backbone's pooled output for an example never changes, so compute it once and reuse it in every later
round and in evaluation. There is no data augmentation, so an example always gives the same feature.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedft.fl.parts import Build, part
from fedft.fl.precision import autocast


def cacheable(model: nn.Module) -> bool:
    """True when only the head trains and nothing (prompts) enters the frozen backbone's input."""
    head = getattr(model, "head", None)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    return (head is not None and getattr(model, "prompt", "missing") is None and hasattr(model, "features")
            and bool(trained) and all(n.startswith("head.") for n in trained))


def feature_bytes(model: nn.Module, n: int) -> int:
    return n * model.head.in_features * 4


class FeatureCache:
    """Examples as their frozen features: .batch(idx) -> ({"features": (B, D)}, labels), the same order and
    lengths as the examples it wraps, so training takes the same batches. All features are computed on
    first use (one pass over the data in large batches); any change to the frozen backbone's weights
    (in place or replaced) clears them."""

    def __init__(self, model: nn.Module, data, batch_size: int = 256, precision: str = "fp32") -> None:
        self.model, self.data, self.batch_size, self.precision = model, data, batch_size, precision
        self.features: torch.Tensor | None = None
        self._key: tuple | None = None

    def __len__(self) -> int:
        return len(self.data)

    @property
    def lengths(self):
        """The wrapped examples' lengths() (text), so training groups the same batches; images have none."""
        return self.data.lengths

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels

    @property
    def nbytes(self) -> int:
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    def batch(self, idx) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        idx = np.asarray(idx)
        return {"features": self._all()[torch.from_numpy(idx)]}, self.data.labels[torch.from_numpy(idx)]

    def _frozen_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.model.backbone.parameters())

    @torch.no_grad()
    def _all(self) -> torch.Tensor:
        key = self._frozen_key()
        if self.features is None or key != self._key:
            self.features, self._key = None, key
            was_training = self.model.training
            self.model.eval()
            order = np.argsort(self.data.lengths(), kind="stable") if hasattr(self.data, "lengths") \
                else np.arange(len(self.data))
            out = None
            device = next(self.model.parameters()).device
            try:
                for i in range(0, len(order), self.batch_size):
                    chunk = order[i: i + self.batch_size]
                    with autocast(device, self.precision):  # the backbone in the run's precision, kept as fp32
                        feats = self.model.features(**self.data.batch(chunk)[0]).float()
                    out = out if out is not None else feats.new_empty(len(self.data), feats.shape[1])
                    out[torch.from_numpy(chunk)] = feats
            finally:
                self.model.train(was_training)
            self.features = out
        return self.features


@part(10)
def feature_cache(b: Build) -> None:
    """(train, test) as cached frozen features where only the head trains and the cache fits fl.cache_mb."""
    fl, model = b.exp.config.fl, b.pool.model
    if not (fl.feature_cache and cacheable(model)) or not b.cacheable:
        return
    need = feature_bytes(model, len(b.pool.data) + len(b.test))
    if need > fl.cache_mb * 2 ** 20:
        b.log(f"feature cache off: {need / 2 ** 20:.0f} MiB > fl.cache_mb = {fl.cache_mb}")
        b.record["feature_cache"] = {"enabled": False, "bytes": need}
        return
    prec = b.pool.cfg.precision
    b.pool.data, b.test = FeatureCache(model, b.pool.data, precision=prec), FeatureCache(model, b.test, precision=prec)
    b.record["feature_cache"] = {"enabled": True, "bytes": need}
