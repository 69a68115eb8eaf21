"""What FedEx-LoRA and FLoRA share: a server that folds a dense matrix per adapted module into the shared model's
frozen weights each round. Clients that missed folds receive them before they train (the cost a variant names for
each fold, summed over the folds a client missed, is counted in bytes down). Checkpoints keep the folded frozen
weights (resume stays bit-identical); the export adds `base_weights.safetensors`, the changed frozen weights under the
plain backbone's names, to load before the adapter (`model.load_state_dict(load_file(...), strict=False)`, then
`PeftModel.from_pretrained`).
"""
from __future__ import annotations

import torch

from fedft.fl.hooks import Hook
from fedft.methods.export import BACKBONE

A, B = ".lora_A.default.weight", ".lora_B.default.weight"


def lora_pairs(names) -> list[tuple[str, str, str]]:
    """(A key, B key, module prefix) of every LoRA module among parameter names."""
    return [(a, a.replace(A, B), a[: -len(A)]) for a in sorted(names) if a.endswith(A) and a.replace(A, B) in names]


def weights_of(updates) -> tuple[list, torch.Tensor]:
    """The updates with data and their normalised data weights p_i (float64), as FedAvg weighs them."""
    weighted = [u for u in updates if u.num_examples > 0]
    p = torch.tensor([u.num_examples for u in weighted], dtype=torch.float64)
    return weighted, (p / p.sum() if len(weighted) else p)


class FoldHook(Hook):
    """`name`: its entry in results.json; `summable`: dense folds add up, so a client that missed several receives
    their sum (one payload); otherwise (FLoRA's stacked factors) each missed fold is sent."""
    order = 85

    def __init__(self, model, pairs, name: str, summable: bool) -> None:
        self.pairs, self.name, self.summable = pairs, name, summable
        self.base = {prefix: model.get_parameter(prefix + ".base_layer.weight") for _, _, prefix in pairs}
        self.scaling = {prefix: float(model.get_submodule(prefix).scaling["default"]) for _, _, prefix in pairs}
        self.costs: list[int] = []  # bytes a client receives for each fold it missed
        self.synced: dict[int, int] = {}  # client -> folds it has

    def add(self, dense: dict[str, torch.Tensor], cost: int) -> None:
        """W += s * dense for each module (dense is before LoRA's scaling s)."""
        with torch.no_grad():
            for prefix, d in dense.items():
                self.base[prefix].add_(self.scaling[prefix] * d.to(self.base[prefix].dtype))
        self.costs.append(cost)

    def configure(self, rnd, instructions, log):
        for ins in instructions:  # the folds it missed go down before it trains
            missed = self.costs[self.synced.get(ins.cid, 0):]
            log.bytes_down += (missed[-1] if missed else 0) if self.summable else sum(missed)
            self.synced[ins.cid] = len(self.costs)
        return instructions

    def state(self) -> dict:
        return {"base": {k: v.detach().clone() for k, v in self.base.items()}, "costs": list(self.costs),
                "synced": dict(self.synced)}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["base"].items():
                self.base[k].copy_(v)
        self.costs, self.synced = list(state["costs"]), dict(state["synced"])

    def describe(self) -> dict:
        return {self.name: {"folds": len(self.costs), "fold_bytes": self.costs[-1] if self.costs else 0}}

    def finish(self, out_dir, rounds):
        from safetensors.torch import save_file

        from fedft.report import atomic_write

        plain = {}
        for prefix, w in self.base.items():
            name = prefix.split(BACKBONE, 1)[1] if BACKBONE in prefix else prefix
            plain[f"{name}.weight"] = w.detach().cpu().contiguous()
        atomic_write(out_dir / "base_weights.safetensors", lambda p: save_file(plain, str(p)))
        return {"base_weights": "base_weights.safetensors"}
