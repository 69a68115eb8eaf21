"""fl.precision: which arithmetic the forward passes use, resolved on the machine that runs them.

bf16 autocast halves the work of a matrix product on hardware that computes bf16 natively: a GPU, or a CPU with
AVX512-BF16 or AMX. On a CPU without them, bf16 is emulated and slower than fp32, so `auto` picks bf16 only where
torch's own capability check finds native support. Master weights, gradients and optimizer state stay fp32 in
every case: autocast only lowers the matrix products of the forward pass (and their backward).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why (results.json's "precision", the start line)."""
    used: str  # "fp32" | "bf16"
    why: str

    def to_dict(self) -> dict:
        return {"used": self.used, "why": self.why}


def native_bf16(device: torch.device) -> str | None:
    """The device's native bf16 support by torch's own check ("amx", "avx512_bf16", "cuda"), or None."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return "amx"
        if torch.cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
    return None


def resolve(asked: str, device: torch.device, keep_fp32: str = "", warn=None) -> Precision:
    """fl.precision -> the precision used on `device`. `keep_fp32`, where given, is why this run's method or
    feature keeps fp32 under auto (an explicit bf16 is still honoured). `warn(line)` gets one line when bf16 is
    asked for where it is emulated (default: stderr)."""
    native = native_bf16(device)
    where = "GPU" if device.type == "cuda" else device.type.upper()
    if asked == "fp32":
        return Precision("fp32", "fl.precision = fp32")
    if asked == "bf16":
        if native is None:
            (warn or _stderr)(f"fedft: warning: fl.precision = bf16 on a {where} without native bf16: it is emulated "
                              f"there and slower than fp32 (auto would pick fp32)")
            return Precision("bf16", f"fl.precision = bf16 (emulated: this {where} has no native bf16)")
        return Precision("bf16", f"fl.precision = bf16 ({where} with native bf16: {native})")
    if native is None:
        return Precision("fp32", f"auto: {where} without native bf16 (it would be emulated, slower)")
    if keep_fp32:
        return Precision("fp32", f"auto: {keep_fp32}")
    return Precision("bf16", f"auto: {where} with native bf16 ({native})")


def keep_fp32(current: Precision, asked: str, why: str) -> Precision:
    """A feature that cannot compute in bf16: under auto it falls back to fp32, saying why."""
    if asked == "auto" and current.used != "fp32":
        return Precision("fp32", f"auto: {why}")
    return current


def autocast(device: torch.device, precision: str):
    """bf16 autocast of the forward pass where asked; a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
