"""FedPFT against federated LoRA on the full model and against FedOT, with the two ablations, on the default text
task (minilm, wordnet-nouns, 50 clients, Dirichlet 0.5, 10 rounds of 10 clients, LoRA r=8 on attention + head).

    .venv/bin/python benchmarks/fedpft.py [--variants a,b,...] [--set section.key=value ...] [--out DIR]

Variants (all evaluate the full model, with the aggregated LoRA and head plugged in):
  full-fm     clients train the full model (no proxy)
  fedot       clients train a sub-model with layers 2 and 4 of 6 dropped, no alignment
  fedpft      clients train a sub-model whose FFNs in layers 1-4 keep 384 of 1,536 neurons (by saliency), aligned
              by 200 steps of layer-level distillation, and re-aligned at the neuron level every 5 rounds
  no-layer    fedpft without the layer-level distillation
  no-neuron   fedpft without the neuron-level alignment
  zero-share  fedpft ranking neurons by the published statistic (share of zero activations)
The two sub-models have about the same size (7.1M of the 10.6M transformer-layer parameters).

Columns: full-model and sub-model accuracy; parameters and fp32 MB of the model a client holds; mean seconds of
a training-only round (rounds without evaluation or alignment); MB sent in all. Finished variants are reused.
Writes DIR/table.md and DIR/table.csv (default benchmarks/out/fedpft).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import run_variant, write_tables  # noqa: E402

VARIANTS = {
    "full-fm": [],
    "fedot": ["proxy.kind='fedot'", "proxy.drop_layers=[2,4]"],
    "fedpft": ["proxy.kind='fedpft'"],
    "no-layer": ["proxy.kind='fedpft'", "proxy.distill_steps=0"],
    "no-neuron": ["proxy.kind='fedpft'", "proxy.align_every=0"],
    "zero-share": ["proxy.kind='fedpft'", "proxy.align_stat='zero_share'"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/fedpft")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row(name, run_variant(out, name, ["method.name='lora'", *VARIANTS[name], *args.set]))
            for name in args.variants.split(",")]
    write_tables(out, rows)


def row(name: str, data: dict) -> dict:
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
        "layer_params": proxy["sub_layer_params"] if proxy else "",
        "train_s_per_round": round(float(np.mean(train_rounds)), 1) if train_rounds else "",
        "MB_sent": round(f["bytes_total"] / 1e6, 2),
        "distill_loss": f"{proxy['distill']['loss_before']:.3f} -> {proxy['distill']['loss_after']:.3f}"
        if proxy and proxy.get("distill") and proxy["distill"]["steps"] else "",
        "seconds": round(f["seconds"]),
    }


if __name__ == "__main__":
    main()
