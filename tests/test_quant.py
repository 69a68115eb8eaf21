"""Compressed payloads: int8 and nf4 blockwise codes decode within the quantiser's bound, their bytes are the real
encoded length, and with error feedback the sum of what the server decodes tracks the sum of the true updates."""
import json

import numpy as np
import pytest
import torch

import fedft
from fedft.config import load_config
from fedft.fl import comm
from fedft.fl.channel import Channel
from fedft.fl.messages import Instruction, Update
from fedft.fl.quant import BLOCK, BOUND, NF4


@pytest.mark.parametrize("dtype", ["int8", "nf4"])
@pytest.mark.parametrize("shape", [(3, 100), (64,), (7,), (2, 3, 5)])
def test_decode_within_the_quantisers_bound(dtype, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 1, int(np.prod(shape))).view(shape)
    out = comm.decode(comm.encode({"w": x, "zero": torch.zeros(5)}, dtype))
    assert out["w"].shape == x.shape and torch.equal(out["zero"], torch.zeros(5))
    flat, got = x.reshape(-1), out["w"].reshape(-1)
    for i in range(0, flat.numel(), BLOCK):
        block = flat[i: i + BLOCK]
        err = (block - got[i: i + BLOCK]).abs().max()
        assert err <= BOUND[dtype] * block.abs().max() * (1 + 1e-6) + 1e-12


def test_nf4_levels_decode_exactly_and_bytes_are_the_real_payload():
    x = NF4.repeat(4) * 3.0  # every level, absmax 3 in each block
    assert torch.allclose(comm.decode(comm.encode({"w": x}, "nf4"))["w"], x)
    big = {"w": torch.randn(4096 * 4)}
    sizes = {d: len(comm.encode(big, d)) for d in ("float32", "int8", "nf4")}
    n = big["w"].numel()
    assert n * 1 + n // BLOCK * 4 <= sizes["int8"] < n * 1 + n // BLOCK * 4 + 400  # codes + scales + header
    assert n // 2 + n // BLOCK * 4 <= sizes["nf4"] < n // 2 + n // BLOCK * 4 + 400
    assert sizes["float32"] > 3.5 * sizes["int8"] > 6 * sizes["nf4"] / 2


@pytest.mark.parametrize("dtype", ["int8", "nf4"])
def test_error_feedback_keeps_the_sum_of_decoded_updates_on_the_sum_of_true_ones(dtype):
    """One client sends 50 small updates from a fixed start. With error feedback the server's running sum of the
    decoded updates stays within one quantisation step of the true sum; without it the error piles up."""
    g = torch.Generator().manual_seed(1)
    start = {"w": torch.randn(256, generator=g)}
    true_steps = [{"w": 0.01 * torch.randn(256, generator=g) + 0.003} for _ in range(50)]

    def run(feedback):
        ch = Channel(dtype, error_feedback=feedback)
        total = torch.zeros(256)
        for step in true_steps:
            (ins,), _ = ch.down([Instruction(cid=0, state=dict(start))])
            sent = {"w": ins.state["w"] + step["w"]}
            (u,), n = ch.up([Update(cid=0, state=sent, num_examples=1)])
            assert n == len(comm.encode({"w": step["w"]}, dtype))  # the update's own payload
            total += u.state["w"] - ins.state["w"]
        return (total - sum(s["w"] for s in true_steps)).abs().max()

    with_ef, without = run(True), run(False)
    step_bound = BOUND[dtype] * max(float(s["w"].abs().max()) for s in true_steps) * 2
    assert with_ef <= step_bound
    assert without > 3 * with_ef


def test_int8_and_nf4_runs_send_fewer_bytes(tiny, tmp_path):
    sent = {}
    for dtype in ("float32", "int8", "nf4"):
        result = fedft.run(load_config(None, tiny(**{"comm.dtype": dtype})), tmp_path / dtype)
        data = json.loads((result.out_dir / "results.json").read_text())
        sent[dtype] = (data["final"]["bytes_up"], data["final"]["bytes_down"])
        assert data["final"]["accuracy"] is not None
    # (tiny-bert's tensors are small, so names and block padding weigh more than on a real model; see above)
    assert sent["float32"][0] > sent["int8"][0] > sent["nf4"][0]
    assert sent["float32"][1] > sent["int8"][1] > sent["nf4"][1]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_float_payload_decodes_as_safetensors_loads_it_into_one_buffer(dtype):
    """fedft's own decode (one buffer per payload) gives safetensors' values, keys and shapes bit for bit, and what
    it decoded encodes to the same bytes again (views are copied out for safetensors)."""
    from safetensors.torch import load

    from fedft.fl import comm
    from fedft.fl.client import read_state

    state = read_state({"layer.1.B": torch.nn.Parameter(torch.randn(6, 2)), "layer.0.A": torch.nn.Parameter(
        torch.randn(2, 6)), "scalar": torch.nn.Parameter(torch.tensor(0.5)), "none": torch.nn.Parameter(torch.zeros(0))})
    assert len({t.untyped_storage().data_ptr() for t in state.values() if t.numel()}) == 1  # one buffer
    payload = comm.encode(state, dtype)
    got, ref = comm.decode(payload), load(payload)
    assert list(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == torch.float32 and got[k].shape == ref[k].shape and torch.equal(got[k], ref[k].float())
    assert comm.encode(got, dtype) == payload
