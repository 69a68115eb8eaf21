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
    """Back to float32 (the parameters' dtype) after the trip."""
    return {k: v.float() for k, v in load(payload).items()}
