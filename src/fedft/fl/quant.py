"""Blockwise quantisers for payloads on the wire: int8 (absmax, 64 values a block) and nf4 (4-bit NormalFloat of
QLoRA, 64 values a block, two codes a byte). Each block keeps its absmax as a float32 scale, counted in the bytes.

Written here rather than taken from bitsandbytes: its quantisers are GPU kernels first (a large, CUDA-oriented
dependency), and these are two short pure functions whose error bounds the tests check.

Error bounds (round to nearest): int8 |x - q(x)| <= absmax / 254 per block; nf4 <= absmax * (1 - 0.7229568) / 2,
the largest half-gap of the NF4 code book.
"""
from __future__ import annotations

import torch

BLOCK = 64
# The 16 NF4 levels (quantiles of N(0, 1) scaled to [-1, 1], with an exact zero), as in QLoRA / bitsandbytes.
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
MIDS = (NF4[1:] + NF4[:-1]) / 2
BOUND = {"int8": 1 / 254, "nf4": (1 - 0.7229568362236023) / 2}  # max error / block absmax


def _blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks (n, BLOCK) zero-padded, their absmax (n,) with 0 -> 1 so empty blocks decode to 0)."""
    flat = x.detach().reshape(-1).float()
    pad = (-flat.numel()) % BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, BLOCK)
    scale = blocks.abs().amax(dim=1)
    return blocks, torch.where(scale > 0, scale, torch.ones_like(scale))


def int8_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (n * BLOCK,), scales float32 (n,))."""
    blocks, scale = _blocks(x)
    return torch.round(blocks / scale[:, None] * 127).to(torch.int8).reshape(-1), scale


def int8_decode(codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    return (codes.view(-1, BLOCK).float() / 127 * scale[:, None]).reshape(-1)[:n].reshape(shape)


def nf4_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 (n * BLOCK / 2,), two 4-bit indices a byte, scales float32 (n,))."""
    blocks, scale = _blocks(x)
    idx = torch.bucketize((blocks / scale[:, None]).reshape(-1), MIDS).to(torch.uint8)  # the nearest level
    return (idx[0::2] << 4) | idx[1::2], scale


def nf4_decode(codes: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    idx = torch.stack([codes >> 4, codes & 15], dim=1).reshape(-1).long()
    return (NF4[idx].view(-1, BLOCK) * scale[:, None]).reshape(-1)[:n].reshape(shape)


CODECS = {"int8": (int8_encode, int8_decode), "nf4": (nf4_encode, nf4_decode)}
