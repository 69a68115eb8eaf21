"""method.variant = "fedex": FedEx-LoRA (Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient
Fine-Tuning of Foundation Models", ACL 2025). Averaging A and B separately is not averaging the clients' updates:
mean(B) mean(A) != mean(B A). FedEx-LoRA averages A and B as FedAvg does and folds the residual

    R = sum_i p_i B_i A_i - (sum_i p_i B_i)(sum_i p_i A_i)

(scaled by LoRA's alpha / r) into the frozen weight of every adapted module, each round, so that the global
effective weight is exactly W + s sum_i p_i B_i A_i, with p_i the clients' data weights (unequal weights included).

Bytes: the folded residual is dense (one d_out x d_in matrix per adapted module). A sampled client that missed
folds since it last took part receives their sum before it trains: one dense payload at comm.dtype, counted in
bytes down. Checkpoints keep the folded frozen weights (resume stays bit-identical). The export adds
`base_weights.safetensors`: the changed frozen weights under the plain backbone's names, to load before the adapter
(`model.load_state_dict(load_file(...), strict=False)`, then `PeftModel.from_pretrained`).
"""
from __future__ import annotations

import torch

from fedft.fl import comm
from fedft.fl.hooks import Hook
from fedft.fl.parts import part
from fedft.methods.export import BACKBONE

A, B = ".lora_A.default.weight", ".lora_B.default.weight"


def lora_pairs(names) -> list[tuple[str, str, str]]:
    """(A key, B key, module prefix) of every LoRA module among parameter names."""
    return [(a, a.replace(A, B), a[: -len(A)]) for a in sorted(names) if a.endswith(A) and a.replace(A, B) in names]


def residuals(states: list[dict], weights: list[float], pairs) -> dict[str, torch.Tensor]:
    """Per module prefix: sum_i p_i B_i A_i - (sum_i p_i B_i)(sum_i p_i A_i), p the normalised weights."""
    p = torch.tensor(weights, dtype=torch.float64)
    p = p / p.sum()
    out = {}
    for a, b, prefix in pairs:
        As = torch.stack([s[a].double() for s in states])
        Bs = torch.stack([s[b].double() for s in states])
        exact = torch.einsum("i,ior,irk->ok", p, Bs, As)
        out[prefix] = (exact - torch.einsum("i,ior->or", p, Bs) @ torch.einsum("i,irk->rk", p, As)).float()
    return out


class FedExFold(Hook):
    """Folds each round's residual into the shared model's frozen weights; counts what clients must download."""
    order = 85

    def __init__(self, model, pairs, dtype: str) -> None:
        self.pairs, self.dtype = pairs, dtype
        self.base = {prefix: model.get_parameter(prefix + ".base_layer.weight") for _, _, prefix in pairs}
        self.scaling = {prefix: float(model.get_submodule(prefix).scaling["default"]) for _, _, prefix in pairs}
        self.folds, self.synced, self.dense_bytes = 0, {}, 0

    def fold(self, updates) -> None:
        weighted = [u for u in updates if u.num_examples > 0]
        if not weighted:
            return
        res = residuals([u.state for u in weighted], [u.num_examples for u in weighted], self.pairs)
        with torch.no_grad():
            for prefix, r in res.items():
                self.base[prefix].add_(self.scaling[prefix] * r.to(self.base[prefix].dtype))
        self.folds += 1
        self.dense_bytes = len(comm.encode({k: self.scaling[k] * v for k, v in res.items()}, self.dtype))

    def configure(self, rnd, instructions, log):
        for ins in instructions:
            if self.synced.get(ins.cid, 0) < self.folds:  # it missed folds: their sum goes down before it trains
                log.bytes_down += self.dense_bytes
            self.synced[ins.cid] = self.folds
        return instructions

    def state(self) -> dict:
        return {"base": {k: v.detach().clone() for k, v in self.base.items()}, "folds": self.folds,
                "synced": dict(self.synced), "dense_bytes": self.dense_bytes}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["base"].items():
                self.base[k].copy_(v)
        self.folds, self.synced, self.dense_bytes = state["folds"], dict(state["synced"]), state["dense_bytes"]

    def describe(self) -> dict:
        return {"fedex": {"folds": self.folds, "dense_payload_bytes": self.dense_bytes}}

    def finish(self, out_dir, rounds):
        """The folded frozen weights under the plain backbone's names (base_weights.safetensors)."""
        from safetensors.torch import save_file

        from fedft.report import atomic_write

        plain = {}
        for prefix, w in self.base.items():
            name = prefix.split(BACKBONE, 1)[1] if BACKBONE in prefix else prefix
            plain[f"{name}.weight"] = w.detach().cpu().contiguous()
        atomic_write(out_dir / "base_weights.safetensors", lambda p: save_file(plain, str(p)))
        return {"fedex_base_weights": "base_weights.safetensors"}


@part(45)
def fedex(b) -> None:
    if b.exp.config.method.variant != "fedex":
        return
    pairs = lora_pairs(b.exp.params)
    hook = FedExFold(b.exp.model, pairs, b.exp.config.comm.dtype)
    inner = b.fed.strategy.aggregate

    def aggregate(rnd, current, updates):
        new = inner(rnd, current, updates)  # FedAvg / FedProx: the data-weighted means of A and B
        hook.fold(updates)
        return new

    b.fed.strategy.aggregate = aggregate
    b.fed.hooks.append(hook)
