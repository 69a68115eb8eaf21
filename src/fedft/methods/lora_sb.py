"""lora_sb: LoRA-SB / Fed-SB (Ponkshe et al., "Initialization using update approximation is a silver bullet for
extreme efficient low-rank fine-tuning", 2024; Singhal et al., "Fed-SB: A Silver Bullet for Extreme Communication
Efficiency and Performance in (Private) Federated LoRA Fine-Tuning", 2025).

Each adapted projection W becomes W + s B R A with B (d_out x r) and A (r x d_in) fixed and only the small r x r
matrix R trained (with the head), s = alpha / r. Because B and A are the same on every client, averaging R is
averaging the updates exactly: mean_i(B R_i A) = B mean_i(R_i) A. A client sends r^2 numbers per module.

B and A come from an approximation of the first full fine-tuning update (LoRA-SB's initialisation): before round 1,
fl.clients_per_round clients (seeded) each compute the gradient G_i of their training loss with respect to every
adapted weight over method.sb_init_batches batches of their own data and send it (dense, counted in round 1's bytes
up); the server takes the data-weighted mean G and its truncated SVD at rank r, G ~ U S V^T, and fixes B = U_r,
A = V_r^T (orthonormal). Every client downloads B and A once, before it first trains (counted in bytes down). R starts
at zero, so the model starts as the pre-trained one and R's first gradient, s B^T G A^T, is the best rank-r
direction of that update (the papers start R from the singular values instead, which is that first step taken).

peft has no LoRA-SB, hence own modules (a child `sb` of each adapted Linear, run in a forward hook as the adapter
method's are). The export is a plain PEFT LoRA adapter: lora_B = B R and lora_A = A with the same alpha and rank, so
`PeftModel.from_pretrained(AutoModel.from_pretrained(base), "RUN/adapter")` loads the trained model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedft.fl import comm
from fedft.fl.client import client_seed, shuffled_batches
from fedft.fl.hooks import Hook
from fedft.fl.parts import part
from fedft.fl.precision import autocast
from fedft.methods.base import METHODS, Method, freeze_all_but
from fedft.methods.export import BACKBONE
from fedft.models.arch import LORA_TARGETS, lookup


class SB(nn.Module):
    """x -> s ((x A^T) R^T) B^T: fixed B and A (buffers), trained R."""

    def __init__(self, d_in: int, d_out: int, r: int, scaling: float) -> None:
        super().__init__()
        self.register_buffer("B", torch.zeros(d_out, r))
        self.register_buffer("A", torch.zeros(r, d_in))
        self.R = nn.Parameter(torch.zeros(r, r))
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * nn.functional.linear(nn.functional.linear(nn.functional.linear(x, self.A), self.R),
                                                   self.B)


def _run_sb(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output + module.sb(args[0]).to(output.dtype)


def sb_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The adapted Linear modules by name (in the model's order)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "sb")}


@METHODS.register("lora_sb")
class LoraSB(Method):
    name = "lora_sb"
    default_lr = 3e-3

    def apply(self, model):
        targets = self.cfg.targets or lookup(LORA_TARGETS, model.backbone.config.model_type, "method 'lora_sb'")
        found = [(n, m) for n, m in model.backbone.named_modules()
                 if isinstance(m, nn.Linear) and n.split(".")[-1] in targets]
        if not found:
            from fedft.errors import UsageError

            raise UsageError(f"method.targets = {targets}: no Linear module of the model has one of these names")
        smallest = min(min(m.in_features, m.out_features) for _, m in found)
        if self.cfg.rank > smallest:
            from fedft.errors import UsageError

            raise UsageError(f"method.rank = {self.cfg.rank}: lora_sb's B and A are the top singular vectors of a "
                             f"{smallest}-wide weight at most; use a rank <= {smallest}")
        for _, linear in found:
            linear.add_module("sb", SB(linear.in_features, linear.out_features, self.cfg.rank,
                                       self.cfg.alpha / self.cfg.rank))
            linear.register_forward_hook(_run_sb)
        return freeze_all_but(model, lambda name: name.startswith("head.") or name.endswith(".sb.R"))

    def export(self, model, out_dir: Path, meta: dict) -> list[str]:
        """A plain PEFT LoRA adapter (lora_B = B R, lora_A = A) in `adapter/`, the head in head.safetensors."""
        from peft import LoraConfig

        from fedft.methods.export import write_adapter

        modules = sb_modules(model)
        state = {}
        for name, linear in modules.items():
            plain = name[len(BACKBONE):] if name.startswith(BACKBONE) else name
            sb = linear.sb
            state[f"base_model.model.{plain}.lora_A.weight"] = sb.A.detach().contiguous().cpu()
            state[f"base_model.model.{plain}.lora_B.weight"] = (sb.B @ sb.R).detach().contiguous().cpu()
        targets = sorted({name.split(".")[-1] for name in modules})
        config = LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, target_modules=targets,
                            base_model_name_or_path=meta.get("model_source"))
        return write_adapter(model, out_dir, dict(meta, method=self.name), config, state)


def approximate_update(model: nn.Module, modules: dict[str, nn.Linear], data, clients: list[np.ndarray],
                       batch_size: int, batches: int, loss_fn, precision: str, seed: int) -> dict[str, torch.Tensor]:
    """Per module: the data-weighted mean over `clients` of each one's mean gradient of the loss with respect to the
    module's weight, over its first `batches` shuffled batches (float64)."""
    weights = [m.weight for m in modules.values()]
    was = [w.requires_grad for w in weights]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    total = {name: torch.zeros(m.weight.shape, dtype=torch.float64) for name, m in modules.items()}
    seen = 0
    device = weights[0].device
    model.train()
    try:
        for i, idx in enumerate(clients):
            if not len(idx):
                continue
            torch.manual_seed(client_seed(seed, i))
            plan = shuffled_batches(idx, batch_size, 1, np.random.default_rng(client_seed(seed, i)))[:batches]
            used = sum(len(b) for b in plan)
            for b in plan:
                inputs, labels = data.batch(b)
                with autocast(device, precision):
                    out = model(**inputs)
                (loss_fn(out, labels) * len(b) / used).backward()  # this client's mean gradient
            for name, m in modules.items():
                total[name] += len(idx) * m.weight.grad.double().cpu()
                m.weight.grad = None
            seen += len(idx)
    finally:
        for w, r in zip(weights, was):
            w.requires_grad_(r)
        for p in frozen:
            p.requires_grad_(True)
    return {name: g / max(seen, 1) for name, g in total.items()}


class Basis(Hook):
    """Bytes of the initialisation: the clients' gradients up (round 1), B and A down to each client once."""
    order = 86

    def __init__(self, init_clients: list[int], up: int, down: int) -> None:
        self.init_clients, self.up, self.down = init_clients, up, down
        self.counted, self.synced = False, set()

    def configure(self, rnd, instructions, log):
        if not self.counted:
            log.bytes_up += self.up
            self.counted = True
        for ins in instructions:
            if ins.cid not in self.synced:
                log.bytes_down += self.down
                self.synced.add(ins.cid)
        return instructions

    def state(self) -> dict:
        return {"counted": self.counted, "synced": sorted(self.synced)}

    def restore(self, state: dict) -> None:
        self.counted, self.synced = state["counted"], set(state["synced"])

    def describe(self) -> dict:
        return {"lora_sb": {"init_clients": self.init_clients, "init_bytes_up": self.up, "basis_bytes": self.down}}


@part(3)  # before any part reads the model's outputs
def lora_sb_init(b) -> None:
    exp = b.exp
    cfg = exp.config
    if cfg.method.name != "lora_sb":
        return
    modules = sb_modules(exp.model)
    rng = np.random.default_rng(client_seed(cfg.fl.seed, 12))
    n = min(cfg.fl.clients_per_round, len(exp.clients))
    chosen = sorted(int(c) for c in rng.choice(len(exp.clients), size=n, replace=False))
    grads = approximate_update(exp.model, modules, b.pool.data, [exp.clients[c] for c in chosen], cfg.fl.batch_size,
                               cfg.method.sb_init_batches, exp.task.loss, b.pool.cfg.precision,
                               client_seed(cfg.fl.seed, 13))
    r = cfg.method.rank
    with torch.no_grad():
        for name, m in modules.items():
            u, _, vh = torch.linalg.svd(grads[name], full_matrices=False)
            m.sb.B.copy_(u[:, :r].float())
            m.sb.A.copy_(vh[:r].float())
    dtype = cfg.comm.dtype
    up = n * len(comm.encode({k: g.float() for k, g in grads.items()}, dtype))
    down = len(comm.encode({f"{k}.{t}": getattr(m.sb, t) for k, m in modules.items() for t in ("B", "A")}, dtype))
    b.fed.hooks.append(Basis(chosen, up, down))
    b.log(f"lora_sb: B and A from the gradients of {n} clients ({up / 1e6:.2f} MB up, {down / 1e6:.2f} MB down "
          f"to each client once)")
