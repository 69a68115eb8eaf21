"""FedPFT: clients fine-tune a compressed, distillation-aligned proxy (sub-FM); the server plugs what they learn
into the full FM. Also the FedOT baseline (layers dropped, no alignment).

build.py makes and saves sub-FMs, distill.py aligns them; this module ties them to a run: `make_sub_backbone`
(before FL), `param_map` (which full-FM parameter each trained sub-FM parameter is), and `ProxyRun` (plugging
into the full FM for evaluation, the neuron-level alignment rounds and what they cost in bytes).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedft.errors import UsageError
from fedft.proxy.build import ProxyInfo, build_sub_fm, is_proxy_dir, load_proxy, save_proxy  # noqa: F401
from fedft.proxy.distill import ActivationStats, distill, ffn_parameters, most_active, neuron_masks

def distill_examples(name: str, backbone, max_length: int = 48, image_size: int = 56, limit: int = 5000,
                     held=()):
    """The server's unlabelled alignment data as model inputs (examples with .batch(idx); labels are zeros), none
    identical to an example of the run's own raw splits `held` (proxy/server_data.py), and its description."""
    from fedft.data import tokenize
    from fedft.data.images import to_examples
    from fedft.proxy.server_data import server_pool

    pool = server_pool(name, backbone.modality, held, limit)
    if backbone.modality == "text":
        return tokenize(pool.raw, backbone.tokenizer, max_length), pool.describe()
    return to_examples(pool.raw, image_size, backbone.image_mean, backbone.image_std,
                       backbone.num_channels), pool.describe()


def make_sub_backbone(cfg, backbone, max_length: int = 48, image_size: int = 56, held=()):
    """The sub-FM for a run, not yet aligned: loaded from proxy.path, or built from `backbone` (the full FM).
    Returns (sub backbone module, ProxyInfo, the server's alignment data or None). `held`: the run's own raw splits
    (training and test), which the server's data never repeats; info.server_data describes that data."""
    data = None
    if cfg.path:
        sub, info = load_proxy(cfg.path)
        if info.kind != cfg.kind:
            raise UsageError(f"proxy.path = {cfg.path!r} holds a {info.kind} sub-model but proxy.kind = {cfg.kind!r}")
        _check_fits(info, backbone.model, cfg.path)
    else:
        sub, info = build_sub_fm(backbone.model, cfg.kind, cfg.keep_layers, cfg.ffn_neurons, cfg.drop_layers,
                                 backbone.source)
    sub.to(next(backbone.model.parameters()).device)
    if cfg.kind == "fedpft" and (not cfg.path and cfg.distill_steps or cfg.align_every):
        data, info.server_data = distill_examples(cfg.distill_data, backbone, max_length, image_size, held=held)
        data = data.to(next(backbone.model.parameters()).device)
    return sub, info, data


def align_layers(cfg, teacher: nn.Module, sub: nn.Module, info: ProxyInfo, data, seed: int, log=None,
                 precision: str = "fp32") -> None:
    """fedpft, before FL: layer-level distillation of the sub-FM's compressed FFNs (unless loaded from proxy.path,
    which was aligned when it was built); the losses go into info.distill."""
    if cfg.kind != "fedpft" or cfg.path or not cfg.distill_steps:
        return
    if all(len(kept) == info.ffn_width for kept in info.neurons.values()):
        return  # nothing was cut: nothing to align
    say = log or (lambda line: None)
    say(f"proxy: layer-level distillation, {cfg.distill_steps} steps on {cfg.distill_data}")
    t0 = time.perf_counter()
    info.distill = distill(teacher, sub, info, data, cfg.distill_steps, cfg.distill_lr, cfg.distill_batch, seed,
                           precision=precision)
    info.distill["seconds"] = round(time.perf_counter() - t0, 1)
    info.distill["precision"] = precision
    say(f"proxy: alignment loss {info.distill['loss_before']:.4g} -> {info.distill['loss_after']:.4g}")


def build(config, out: str | Path, log=None) -> tuple[Path, ProxyInfo]:
    """`fedft proxy build`: make the sub-model of model.name that `config.proxy` describes (aligned, for fedpft),
    and save it as a Hugging Face folder that proxy.path can name. Returns (folder, ProxyInfo)."""
    from dataclasses import replace

    from fedft.models import load_backbone

    out = Path(out)
    if out.exists():
        raise UsageError(f"--out {str(out)!r} already exists; choose another folder")
    if config.proxy.kind == "none":
        raise UsageError("proxy.kind = 'none': choose fedpft or fedot")
    backbone = load_backbone(config.model)
    if backbone.clip is not None or backbone.model_type not in _saveable():
        from fedft.models.arch import FFN_MODULES

        raise UsageError(f"model.name = {config.model.name!r}: a {backbone.model_type!r} model; a sub-model can be "
                         f"made of {', '.join(sorted(FFN_MODULES))} models")
    cfg = replace(config.proxy, path="", align_every=0)
    sub, info, data = make_sub_backbone(cfg, backbone, config.model.max_length, config.data.image_size)
    align_layers(cfg, backbone.model, sub, info, data, config.fl.seed, log)
    norm = (backbone.image_mean, backbone.image_std) if backbone.modality == "image" else None
    return save_proxy(sub, info, out, backbone.tokenizer if backbone.modality == "text" else None, norm), info


def _saveable() -> tuple[str, ...]:
    from fedft.models.arch import FFN_MODULES

    return tuple(FFN_MODULES)


def _check_fits(info: ProxyInfo, full: nn.Module, path: str) -> None:
    from fedft.models.arch import transformer_layers

    from fedft.proxy.build import ffn_pair

    layers = transformer_layers(full)
    fits = (info.model_type in ("", full.config.model_type) and info.hidden_size in (0, full.config.hidden_size)
            and info.full_layers in (0, len(layers)) and max(info.layer_map) < len(layers)
            and info.ffn_width == ffn_pair(layers[0], full.config.model_type)[0].out_features)
    if not fits:
        raise UsageError(f"proxy.path = {path!r} was made from another model ({info.source}); model.name must be "
                         f"the model it was built from")


def param_map(sub_params: dict[str, nn.Parameter], full_params: dict[str, nn.Parameter], info: ProxyInfo,
              layer_prefix: str, kind: str, method: str) -> dict[str, str]:
    """sub-FM trainable parameter name -> the full-FM parameter it plugs into. Refuses (exit 2) a method that
    trains a parameter without a same-shaped counterpart (e.g. a compressed FFN's bias under `bias`)."""
    pattern = re.compile(rf"(^|\.){re.escape(layer_prefix)}\.(\d+)\.")
    out = {}
    for name, p in sub_params.items():
        full = pattern.sub(lambda m: f"{m.group(1)}{layer_prefix}.{info.layer_map[int(m.group(2))]}.", name, count=1)
        target = full_params.get(full)
        if target is None or target.shape != p.shape:
            have = "no counterpart" if target is None else f"shape {tuple(target.shape)} there"
            raise UsageError(f"method.name = {method!r} cannot be plugged back from a {kind} proxy: it trains {name} "
                             f"(shape {tuple(p.shape)}, {have} in the full model); use lora, adapter, prompt or head, "
                             f"which train only parts that keep their shape")
        out[name] = full
    missing = set(full_params) - set(out.values())
    for name in missing:  # trained in the full model but not in the proxy (fedot's dropped layers): must not matter
        if pattern.search(name) is None:
            raise UsageError(f"method.name = {method!r}: the full model trains {name}, which the proxy does not have")
    return out


@dataclass
class ProxyRun:
    """The server's side of FedPFT during FL: the full FM (same method applied) that the aggregated parameters are
    plugged into for evaluation, and the neuron-level alignment of the sub-FM's FFNs."""
    cfg: object  # ProxyConfig
    info: ProxyInfo
    full: nn.Module  # the full FM classifier, method applied
    full_params: dict[str, nn.Parameter]
    mapping: dict[str, str]  # sub name -> full name
    teacher: nn.Module  # the full FM's backbone module (inside `full`)
    student: nn.Module  # the sub-FM's backbone module (inside the clients' model)
    test: object = None  # the test examples (as model inputs) the full model is evaluated on
    data: object = None  # the server's alignment data
    seed: int = 0
    dtype: str = "float32"  # comm.dtype: how weights travel
    precision: str = "fp32"  # the clients' precision (set by the proxy_run part): statistics and re-distillation
    version: int = 0  # bumped by each neuron-level alignment
    client_version: dict[int, int] = field(default_factory=dict)
    alignments: list[dict] = field(default_factory=list)

    @torch.no_grad()
    def plug(self, params: dict[str, nn.Parameter]) -> None:
        for sub_name, full_name in self.mapping.items():
            self.full_params[full_name].copy_(params[sub_name])

    def due(self, rnd: int) -> bool:
        return self.cfg.kind == "fedpft" and self.cfg.align_every > 0 and rnd % self.cfg.align_every == 0 \
            and bool(self.info.neurons)

    def ffn_bytes(self) -> int:
        """The compressed FFNs' weights as sent (all of them: the clients cannot tell which neurons moved)."""
        from fedft.fl import comm

        return len(comm.encode({str(i): p.detach() for i, p in enumerate(ffn_parameters(self.student, self.info))},
                               self.dtype))

    def owed(self, cids: list[int]) -> int:
        """Bytes of re-aligned FFN weights sent down to the clients `cids` that have not had the latest yet."""
        stale = [c for c in cids if self.client_version.get(c, 0) < self.version]
        for c in cids:
            self.client_version[c] = self.version
        return len(stale) * self.ffn_bytes() if stale else 0

    def client_stats(self, model: nn.Module, data, idx: np.ndarray, batch_size: int) -> ActivationStats:
        """What one client measures on its own data with its current model: per-neuron activity of the sub-FFNs."""
        from fedft.fl.precision import autocast

        stats = ActivationStats(self.student, self.info)
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        with autocast(device, self.precision):
            stats.collect(lambda inputs: model(**inputs),
                          (data.batch(idx[i: i + batch_size]) for i in range(0, len(idx), batch_size)))
        model.train(was)
        return stats

    def gather(self, model: nn.Module, params: dict[str, nn.Parameter], updates, client_data: list[np.ndarray],
               data, batch_size: int) -> ActivationStats:
        """Every returned client's activation statistics (each on its own data with its trained parameters),
        summed as the server receives them. Leaves `params` holding the last client's state."""
        from fedft.fl.client import load_state

        total = ActivationStats(self.student, self.info)
        for update, idx in zip(updates, client_data):
            load_state(params, update.state)
            total.add(self.client_stats(model, data, idx, max(batch_size, 64)))
        return total

    def state(self) -> dict:
        """What the run has changed since it began (for checkpoints): the re-aligned FFN weights, their version, the
        version each client holds, the alignments so far."""
        return {"ffn": [p.detach().clone() for p in ffn_parameters(self.student, self.info)],
                "version": self.version, "client_version": dict(self.client_version),
                "alignments": list(self.alignments)}

    @torch.no_grad()
    def restore(self, state: dict) -> None:
        for p, saved in zip(ffn_parameters(self.student, self.info), state["ffn"], strict=True):
            p.copy_(saved)
        self.version, self.client_version = state["version"], dict(state["client_version"])
        self.alignments = list(state["alignments"])

    def align(self, stats: ActivationStats, rnd: int) -> dict:
        """Freeze the most active share of each compressed FFN's neurons and re-distil the rest against the FM."""
        t0 = time.perf_counter()
        frozen = most_active(stats.activity(self.cfg.align_stat), self.cfg.align_keep)
        masks = neuron_masks(self.student, self.info, frozen)
        result = distill(self.teacher, self.student, self.info, self.data, self.cfg.align_steps, self.cfg.distill_lr,
                         self.cfg.distill_batch, seed=self.seed + rnd, masks=masks, precision=self.precision)
        self.version += 1
        result.update(round=rnd, stat=self.cfg.align_stat, frozen=int(sum(int(m.sum()) for m in frozen.values())),
                      seconds=round(time.perf_counter() - t0, 2))
        self.alignments.append(result)
        return result
