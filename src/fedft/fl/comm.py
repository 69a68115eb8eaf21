"""Payloads as they travel: the trainable tensors serialised with safetensors at `comm.dtype`.

Byte counts in results.json are len() of these payloads, not estimates from parameter counts.
"""
from __future__ import annotations

import torch
from safetensors.torch import load, save

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

State = dict[str, torch.Tensor]


def encode(state: State, dtype: str) -> bytes:
    return save({k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in state.items()})


def decode(payload: bytes) -> State:
    """Back to float32 (the parameters' dtype) after the trip, keys sorted: safetensors hands them back in a
    different order on every call, and anything that walks the keys (client DP draws its noise key by key) must see
    the same order every run."""
    loaded = load(payload)
    return {k: loaded[k].float() for k in sorted(loaded)}
