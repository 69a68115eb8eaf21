"""FedPFT against federated LoRA on the full model and against FedOT, with the two ablations, on the default text
task (minilm, wordnet-nouns, 50 clients, Dirichlet 0.5, 10 rounds of 10 clients, LoRA r=8 on attention + head).

    .venv/bin/python benchmarks/fedpft.py [--variants a,b,...] [--drop-layers 2,4] [--set section.key=value ...]
        [--out DIR]

On images: --set "model.name='dinov2-small'" --set "data.name='fashion-mnist'" --drop-layers 2,4,6,8,10 (12 layers:
FedOT keeps 7, about the FedPFT sub-model's size).

Variants (all evaluate the full model, with the aggregated LoRA and head plugged in):
  full-fm     clients train the full model (no proxy)
  fedot       clients train a sub-model with the --drop-layers dropped (default 2 and 4 of 6), no alignment
  fedpft      clients train a sub-model whose FFNs in layers 1-4 keep 384 of 1,536 neurons (by saliency), aligned
              by 200 steps of layer-level distillation, and re-aligned at the neuron level every 5 rounds
  no-layer    fedpft without the layer-level distillation
  no-neuron   fedpft without the neuron-level alignment
  zero-share  fedpft ranking neurons by the published statistic (share of zero activations)
The two sub-models have about the same size (7.1M of the 10.6M transformer-layer parameters).

Columns: full-model and sub-model accuracy; parameters and fp32 MB of the model a client holds; the peak memory
(RSS, and on a GPU the peak of allocated GPU memory) of a process that loads only what a client holds and trains one
client's local epoch (the same data loading in every case, so the differences are the model's); mean seconds of a training-only round (rounds
without evaluation or alignment); MB sent in all. Finished variants are reused.
Writes DIR/table.md and DIR/table.csv (default benchmarks/out/fedpft).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import run_variant, write_tables  # noqa: E402

VARIANTS = {
    "full-fm": [],
    "fedot": ["proxy.kind='fedot'"],  # + proxy.drop_layers from --drop-layers
    "fedpft": ["proxy.kind='fedpft'"],
    "no-layer": ["proxy.kind='fedpft'", "proxy.distill_steps=0"],
    "no-neuron": ["proxy.kind='fedpft'", "proxy.align_every=0"],
    "zero-share": ["proxy.kind='fedpft'", "proxy.align_stat='zero_share'"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--drop-layers", default="2,4", help="the layers FedOT drops")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/fedpft")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",")
    drop = f"proxy.drop_layers=[{args.drop_layers}]"
    peaks = client_memory(out / "memory", args.set, drop)
    rows = []
    for name in names:
        data = run_variant(out, name, ["method.name='lora'", *VARIANTS[name], *args.set,
                                       *([drop] if name == "fedot" else [])])
        rows.append(row(name, data, peaks["full-fm" if name == "full-fm" else "fedot" if name == "fedot" else "fedpft"]))
        write_tables(out, rows)  # after every variant: an interrupted benchmark keeps its table so far


CLIENT = """
import resource, sys, time
import torch
from fedft.api import prepare
from fedft.config import load_config
from fedft.fl.client import TrainConfig, local_train, read_state
exp = prepare(load_config(None, sys.argv[1:]))
idx = [i for c in exp.clients[:10] for i in c]  # the data of 10 clients: one round's worth of local training
cfg = TrainConfig(1, exp.config.fl.batch_size, exp.lr, group_by_length=True)
local_train(exp.model, exp.params, read_state(exp.params), exp.train, exp.clients[0][:64], cfg, 0)  # warm-up
t0 = time.perf_counter()
local_train(exp.model, exp.params, read_state(exp.params), exp.train, idx, cfg, 0)
speed = len(idx) / (time.perf_counter() - t0)
gpu = torch.cuda.max_memory_allocated() // 2**20 if torch.cuda.is_available() else 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, speed, gpu)
"""


def client_memory(folder: Path, sets: list[str], drop: str) -> dict[str, tuple[int, float, int]]:
    """Peak MiB of a fresh process holding only a client's model (the full model, or a saved sub-model folder,
    which `fedft proxy build` makes) while it trains one client's local epoch."""
    from fedft.config import load_config
    from fedft.proxy import build

    sets = [s.replace("'", '"') for s in sets]
    models = {"full-fm": load_config(None, sets).model.name}
    for kind, extra in (("fedot", [drop]), ("fedpft", ["proxy.distill_steps=0"])):
        path = folder / kind
        if not (path / "proxy.json").exists():
            build(load_config(None, [*sets, f'proxy.kind="{kind}"', *extra]), path)
        models[kind] = str(path)
    peaks = {}
    for kind, model in models.items():
        over = [*sets, f'model.name="{model}"', 'method.name="lora"']
        done = subprocess.run([sys.executable, "-c", CLIENT, *over], capture_output=True, text=True, check=True)
        mib, speed, gpu = done.stdout.strip().splitlines()[-1].split()
        peaks[kind] = (int(mib), round(float(speed), 1), int(gpu))
        print(f"client {kind}: peak {mib} MiB, GPU peak {gpu} MiB, {float(speed):.1f} examples/s", flush=True)
    return peaks


def row(name: str, data: dict, client: tuple[int, float, int]) -> dict:
    f, proxy = data["final"], data.get("proxy")
    aligned = {a["round"] for a in (proxy or {}).get("alignments", [])}
    train_rounds = [r["seconds"] for r in data["rounds"] if r["accuracy"] is None and r["round"] not in aligned]
    client_params = f["total_params"]
    return {
        "variant": name,
        "full_model_accuracy": round(f["accuracy"], 4),
        "sub_model_accuracy": round(f["proxy_accuracy"], 4) if proxy else "",
        "client_model_params": client_params,
        "client_model_MB": round(4 * client_params / 1e6, 1),
        "client_peak_MiB": client[0],
        **({"client_gpu_peak_MiB": client[2]} if client[2] else {}),
        "client_examples_per_s": client[1],
        "layer_params": proxy["sub_layer_params"] if proxy else "",
        "train_s_per_round": round(float(np.mean(train_rounds)), 1) if train_rounds else "",
        "MB_sent": round(f["bytes_total"] / 1e6, 2),
        "distill_loss": f"{proxy['distill']['loss_before']:.3f} -> {proxy['distill']['loss_after']:.3f}"
        if proxy and proxy.get("distill") and proxy["distill"]["steps"] else "",
        "seconds": round(f["seconds"]),
    }


if __name__ == "__main__":
    main()
