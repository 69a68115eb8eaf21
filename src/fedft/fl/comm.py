"""Payloads as they travel: the trainable tensors serialised with safetensors at `comm.dtype`: a float type, or
int8 / nf4 blockwise codes with their scales (fl/quant.py; each tensor's shape in the safetensors metadata).

Byte counts in results.json are len() of these payloads, not estimates from parameter counts.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import load, save

from fedft.fl.quant import CODECS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTISED = tuple(CODECS)  # int8, nf4
State = dict[str, torch.Tensor]


def encode(state: State, dtype: str) -> bytes:
    if dtype in CODECS:
        enc = CODECS[dtype][0]
        tensors, shapes = {}, {}
        for k, v in state.items():
            tensors[f"{k}::codes"], tensors[f"{k}::scales"] = enc(v)
            shapes[k] = list(v.shape)
        return save(tensors, metadata={"fedft_quant": dtype, "shapes": json.dumps(shapes)})
    return save({k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in state.items()})


def decode(payload: bytes) -> State:
    """Back to float32 (the parameters' dtype) after the trip, keys sorted: safetensors hands them back in a
    different order on every call, and anything that walks the keys (client DP draws its noise key by key) must see
    the same order every run."""
    loaded = load(payload)
    meta = _metadata(payload)
    if meta.get("fedft_quant"):
        dec = CODECS[meta["fedft_quant"]][1]
        shapes = json.loads(meta["shapes"])
        return {k: dec(loaded[f"{k}::codes"], loaded[f"{k}::scales"], tuple(shapes[k])) for k in sorted(shapes)}
    return {k: loaded[k].float() for k in sorted(loaded)}


def _metadata(payload: bytes) -> dict:
    """The safetensors header's __metadata__ (an 8-byte little-endian length, then JSON)."""
    n = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8: 8 + n]).get("__metadata__") or {}
