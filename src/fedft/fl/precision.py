"""fl.precision: which arithmetic the forward passes use, resolved on the machine that runs them.

bf16 autocast halves the work of a matrix product on hardware that computes bf16 natively: a GPU, or a CPU with
AVX512-BF16 or AMX. On a CPU without them, bf16 is emulated and slower than fp32, so `auto` picks bf16 only where
torch's own capability check finds native support, and, on a CPU, only where bf16 is also measured faster: native
support does not promise speed. (An Intel Xeon, family 6 model 207, with avx512_bf16 but no AMX exposed, computed
bf16 matrix products at 0.6-0.7x fp32's speed and ran the default run 1.49x longer in bf16; on an AMD EPYC with
avx512_bf16, issue 24 reports the default run 1.81x faster in bf16.) The measurement (`bf16_speedup`, under a
second) is made once per machine and kept in fedft's cache folder, so a machine always resolves auto the same way
and its runs stay deterministic.
Master weights, gradients and optimizer state stay fp32 in every case: autocast only lowers the matrix products
of the forward pass (and their backward).
"""
from __future__ import annotations

import json
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

FASTER = 1.2  # auto picks bf16 on a CPU whose bf16 matrix products run at least this many times fp32's speed


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
    if device.type == "cpu":
        speed = bf16_speedup()
        if speed < FASTER:
            return Precision("fp32", f"auto: CPU with native bf16 ({native}), but its bf16 matrix products run at "
                                     f"{speed:.2f}x fp32's speed (measured here; bf16 needs >= {FASTER}x)")
        return Precision("bf16", f"auto: CPU with native bf16 ({native}), {speed:.2f}x fp32's speed (measured here)")
    return Precision("bf16", f"auto: {where} with native bf16 ({native})")


def keep_fp32(current: Precision, asked: str, why: str) -> Precision:
    """A feature that cannot compute in bf16: under auto it falls back to fp32, saying why."""
    if asked == "auto" and current.used != "fp32":
        return Precision("fp32", f"auto: {why}")
    return current


def autocast(device: torch.device, precision: str):
    """bf16 autocast of the forward pass where asked; a no-op for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


_LOW: dict[int, tuple] = {}  # id(weight) -> (weakref to it, data_ptr, version, its bf16 copy); gone with the weight


def _low(w: nn.Parameter) -> torch.Tensor:
    """w's bf16 copy, made once and kept while w's data is unchanged (same storage, same version counter)."""
    key = id(w)
    hit = _LOW.get(key)
    if hit is None or hit[0]() is not w or hit[1:3] != (w.data_ptr(), w._version):
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable in training after an eval
            low = w.detach().to(torch.bfloat16)

        def forget(ref, key=key):  # drop the entry with its weight, unless a new weight reused the id
            if key in _LOW and _LOW[key][0] is ref:
                del _LOW[key]
        hit = (weakref.ref(w, forget), w.data_ptr(), w._version, low)
        _LOW[key] = hit
    return hit[3]


@contextmanager
def lowered(model: nn.Module, precision: str, trainable: bool = False):
    """Under bf16: each nn.Linear whose weight does not train (every one with `trainable`, as in an evaluation)
    multiplies by a bf16 copy of its weight made once, instead of the copy autocast makes at every forward pass
    (autocast keeps its casts only of weights that require grad). The rounding is the same, so results are bit
    for bit those of plain autocast. On an Intel Xeon family 6 model 167 (AMX), where the 37 frozen MiniLM weights
    were cast again at every batch, a default 4-client LoRA round took 0.915x the time and an evaluation 0.95x
    (interleaved A/B, 2026-12-06). Only the module's own forward uses
    the copy: anything reading `module.weight` (peft's DoRA norm, merging, saving) sees the fp32 weight."""
    if precision != "bf16":
        yield
        return
    done = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if (type(m) is nn.Linear and isinstance(w, nn.Parameter) and w.dtype == torch.float32
                and (trainable or not w.requires_grad) and "forward" not in vars(m)):
            m.forward = _linear(m, _low(w))
            done.append(m)
    try:
        yield
    finally:
        for m in done:
            del m.forward


def _linear(m: nn.Linear, low: torch.Tensor):
    return lambda x: F.linear(x, low, m.bias)


def bf16_speedup() -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (a MiniLM-sized FFN product, median of
    interleaved repeats), measured once per machine and torch version and kept in $FEDFT_CACHE/precision.json."""
    from fedft.models.dinov2_onnx import cache_root
    from fedft.report import write_json

    key = f"{cpu_name()}|{torch.__version__}|{torch.get_num_threads()} threads"
    path = cache_root() / "precision.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), (int, float)):
        return float(known[key])
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 384, generator=g), torch.randn(384, 1536, generator=g)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    times = {dt: [] for dt in pairs}
    for rep in range(9):
        for dt, (x, y) in pairs.items():
            t0 = time.perf_counter()
            for _ in range(3):
                x @ y
            if rep >= 2:  # the first repeats warm up (oneDNN compiles its kernels)
                times[dt].append(time.perf_counter() - t0)
    med = {dt: sorted(ts)[len(ts) // 2] for dt, ts in times.items()}
    speed = round(med[torch.float32] / med[torch.bfloat16], 2)
    try:  # written whole or not at all
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**known, key: speed})
    except OSError:
        pass
    return speed


def cpu_name() -> str:
    """The processor as /proc/cpuinfo names it, with its family and model numbers (the same on every core)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
    return f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model {info.get('model', '?')})"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
