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
    return save({k: owned(v.detach().to("cpu", DTYPES[dtype]).contiguous()) for k, v in state.items()})


def owned(t: torch.Tensor) -> torch.Tensor:
    """safetensors refuses tensors that share memory: a view into a state's one buffer (decode, read_state) is
    copied out first."""
    return t.clone() if t._base is not None else t


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
    return _flat(payload)


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _flat(payload: bytes) -> State:
    """A float payload back as views into one float32 buffer, keys sorted. Written by hand because
    safetensors.torch.load copies every tensor twice (to bytes, then to a bytearray) and leaves one small allocation
    per tensor: with 100 simulated SmolLM2 LoRA updates (240 tensors each) held until aggregation, the heap grew by
    1.38x their size; one buffer per update, 1.11x (benchmarks/llm.py). The same values, bit for bit."""
    n = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8: 8 + n])
    header.pop("__metadata__", None)
    dtypes = {v["dtype"] for v in header.values()}
    if len(dtypes) != 1 or not dtypes <= set(_SAFETENSORS_DTYPES):  # not what encode writes: the library's way
        loaded = load(payload)
        return {k: loaded[k].float() for k in sorted(loaded)}
    dtype = _SAFETENSORS_DTYPES[dtypes.pop()]
    size = torch.finfo(dtype).bits // 8
    data = memoryview(payload)[8 + n:]
    buffer = torch.frombuffer(bytearray(data), dtype=dtype).float() if len(data) else torch.empty(0)
    out = {}
    for k in sorted(header):
        start, end = header[k]["data_offsets"]
        out[k] = buffer[start // size: end // size].view(header[k]["shape"])
    return out


def _metadata(payload: bytes) -> dict:
    """The safetensors header's __metadata__ (an 8-byte little-endian length, then JSON)."""
    n = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8: 8 + n]).get("__metadata__") or {}
