"""Aligning the sub-FM with the full FM (FedPFT): layer-level distillation before FL, and the neuron-level
re-distillation during FL, which freezes the neurons clients use most and re-trains the rest.

Only the compressed FFNs train. The loss of one compressed layer is mean(((h_T - h_S) / rms(h_T))^2) over its
output tokens (padding left out), averaged over the compressed layers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedft.fl.precision import autocast
from fedft.models.arch import transformer_layers
from fedft.proxy.build import ProxyInfo, ffn_pair


def hidden_states(backbone: nn.Module, inputs: dict[str, torch.Tensor], precision: str = "fp32"
                  ) -> tuple[torch.Tensor, ...]:
    """Every layer's output (index i+1 is layer i's), with the input embeddings at index 0; the forward pass
    computes in `precision` (fl/precision.py)."""
    extra = {"interpolate_pos_encoding": True} if backbone.config.model_type == "vit" and "pixel_values" in inputs \
        else {}
    with autocast(next(backbone.parameters()).device, precision):
        return backbone(**inputs, output_hidden_states=True, **extra).hidden_states


def alignment_loss(teacher: tuple[torch.Tensor, ...], student: tuple[torch.Tensor, ...],
                   pairs: list[tuple[int, int]], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over `pairs` (student layer, teacher layer) of mean(((h_T - h_S) / rms(h_T))^2) over tokens and
    features; `mask` (B, T) leaves out padding."""
    losses = []
    for s, t in pairs:
        h_t, h_s = teacher[t + 1].float(), student[s + 1].float()
        rms = h_t.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6)
        err = ((h_t - h_s) / rms).pow(2).mean(-1)  # (B, T)
        losses.append(err.mean() if mask is None else (err * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(losses).mean()


def ffn_parameters(student: nn.Module, info: ProxyInfo) -> list[nn.Parameter]:
    """The parameters of the compressed FFNs: W_in (weight, bias), W_out (weight, bias) per compressed layer."""
    layers = transformer_layers(student)
    out = []
    for i in sorted(info.neurons):
        w_in, w_out = ffn_pair(layers[i], student.config.model_type)
        out += [p for p in (w_in.weight, w_in.bias, w_out.weight, w_out.bias) if p is not None]
    return out


def neuron_masks(student: nn.Module, info: ProxyInfo, frozen: dict[int, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
    """Gradient masks that hold the neurons `frozen[layer]` (bool per neuron) and W_out's bias still."""
    layers = transformer_layers(student)
    masks = {}
    for i, keep in frozen.items():
        w_in, w_out = ffn_pair(layers[i], student.config.model_type)
        free = (~keep).to(device=w_in.weight.device, dtype=w_in.weight.dtype)
        masks[w_in.weight] = free[:, None]
        if w_in.bias is not None:
            masks[w_in.bias] = free
        masks[w_out.weight] = free[None, :]
        if w_out.bias is not None:
            masks[w_out.bias] = torch.zeros_like(w_out.bias)
    return masks


def distill(teacher: nn.Module, student: nn.Module, info: ProxyInfo, data, steps: int, lr: float, batch_size: int,
            seed: int, masks: dict[nn.Parameter, torch.Tensor] | None = None, held_out: int = 256,
            precision: str = "fp32") -> dict:
    """Train the student's compressed FFNs to match the teacher's layer outputs on `data` (examples with
    .batch(idx)); the first `held_out` examples only measure the loss before and after. Returns
    {"steps", "loss_before", "loss_after"}; every other parameter of the student keeps its value and its
    requires_grad. The forward passes compute in `precision`; the loss, the weights and AdamW's state in fp32."""
    pairs = [(i, info.layer_map[i]) for i in sorted(info.neurons)]
    params = ffn_parameters(student, info)
    held = np.arange(min(held_out, len(data) // 4))
    if hasattr(data, "lengths"):
        held = held[np.argsort(data.lengths(held)[held], kind="stable")]  # batches of similar length
    pool = np.arange(len(held), len(data))
    before = _held_out_loss(teacher, student, data, held, pairs, precision=precision)
    if steps == 0 or not pairs:
        return {"steps": 0, "loss_before": before, "loss_after": before}
    flags = {p: p.requires_grad for p in student.parameters()}
    was_training, teacher_training = student.training, teacher.training
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    student.eval(), teacher.eval()  # no dropout: the student should match the teacher as evaluated
    rng = np.random.default_rng(seed)
    try:
        for batch in _batches(data, pool, batch_size, steps, rng):
            inputs, _ = data.batch(batch)
            with torch.no_grad():
                t = hidden_states(teacher, inputs, precision)
            loss = alignment_loss(t, hidden_states(student, inputs, precision), pairs, inputs.get("attention_mask"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p, m in (masks or {}).items():
                if p.grad is not None:
                    p.grad.mul_(m)
            opt.step()
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = None
        student.train(was_training), teacher.train(teacher_training)
    return {"steps": steps, "loss_before": before,
            "loss_after": _held_out_loss(teacher, student, data, held, pairs, precision=precision)}


@torch.no_grad()
def _held_out_loss(teacher, student, data, held: np.ndarray, pairs, batch_size: int = 64,
                   precision: str = "fp32") -> float:
    if not pairs or not len(held):
        return 0.0
    teacher_mode, student_mode = teacher.training, student.training
    teacher.eval(), student.eval()
    total, count = 0.0, 0
    for i in range(0, len(held), batch_size):
        inputs, _ = data.batch(held[i: i + batch_size])
        loss = alignment_loss(hidden_states(teacher, inputs, precision), hidden_states(student, inputs, precision),
                              pairs, inputs.get("attention_mask"))
        n = len(held[i: i + batch_size])
        total, count = total + float(loss) * n, count + n
    teacher.train(teacher_mode), student.train(student_mode)
    return total / count


def _batches(data, pool: np.ndarray, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`steps` random batches of `pool`, grouped by length where the data has lengths (text: less padding)."""
    from fedft.fl.client import shuffled_batches

    lengths = data.lengths(pool) if hasattr(data, "lengths") else None
    out: list[np.ndarray] = []
    while len(out) < steps:
        out += [b for b in shuffled_batches(pool, batch_size, 1, rng, lengths)
                if len(b) == batch_size or len(pool) < batch_size]
    return out[:steps]


class ActivationStats:
    """Per-neuron statistics of the compressed FFNs' activations (the input of W_out), summed over real tokens:
    |activation| and how many are exactly zero. A client collects them on its data; the server adds them up."""

    def __init__(self, student: nn.Module, info: ProxyInfo) -> None:
        self.layers = sorted(info.neurons)
        modules = transformer_layers(student)
        self._outs = [ffn_pair(modules[i], student.config.model_type)[1] for i in self.layers]
        self.abs_sum = {i: torch.zeros(m.in_features, dtype=torch.float64) for i, m in zip(self.layers, self._outs)}
        self.zeros = {i: torch.zeros(m.in_features, dtype=torch.float64) for i, m in zip(self.layers, self._outs)}
        self.count = 0
        self.mask: torch.Tensor | None = None  # (B, T) real-token mask of the current batch

    @torch.no_grad()
    def collect(self, forward, batches) -> None:
        """Run forward(inputs) for every (inputs, _) in batches with hooks on W_out's input."""
        hooks = [m.register_forward_pre_hook(self._hook(i)) for i, m in zip(self.layers, self._outs)]
        try:
            for inputs, _ in batches:
                mask = inputs.get("attention_mask")
                self.mask = None if mask is None else mask.bool()
                forward(inputs)
        finally:
            for h in hooks:
                h.remove()

    def _hook(self, layer: int):
        def hook(module, args):
            a = args[0].detach().float()  # (B, T, k)
            first = layer == self.layers[0]
            if self.mask is not None and self.mask.shape == a.shape[:2]:
                a = a[self.mask]
            else:  # images, or a prompt-extended sequence: every token counts
                a = a.reshape(-1, a.shape[-1])
            self.abs_sum[layer] += a.abs().sum(0).double().cpu()
            self.zeros[layer] += (a == 0).sum(0).double().cpu()
            if first:
                self.count += a.shape[0]
        return hook

    def add(self, other: "ActivationStats") -> None:
        for i in self.layers:
            self.abs_sum[i] += other.abs_sum[i]
            self.zeros[i] += other.zeros[i]
        self.count += other.count

    def activity(self, stat: str) -> dict[int, torch.Tensor]:
        """Per-neuron activity per layer, higher = more active: mean |activation|, or 1 - share of zeros."""
        n = max(self.count, 1)
        if stat == "mean_abs":
            return {i: self.abs_sum[i] / n for i in self.layers}
        return {i: 1.0 - self.zeros[i] / n for i in self.layers}

    def nbytes(self) -> int:
        """What a client sends: two float32 vectors per compressed layer and a count."""
        return sum(8 * len(v) for v in self.abs_sum.values()) + 8


def most_active(activity: dict[int, torch.Tensor], share: float) -> dict[int, torch.Tensor]:
    """Per layer, a bool mask of the round(share * k) most active neurons (ties: the lower index)."""
    out = {}
    for i, a in activity.items():
        k = int(round(share * len(a)))
        keep = torch.zeros(len(a), dtype=torch.bool)
        if k:
            keep[torch.sort(a, descending=True, stable=True).indices[:k]] = True
        out[i] = keep
    return out
