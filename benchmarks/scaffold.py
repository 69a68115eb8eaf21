"""SCAFFOLD (SGD local steps, control variates) against FedAvg and FedProx with SGD and with AdamW, on the default
text task (minilm + LoRA, wordnet-nouns, 50 clients, 10 per round, 10 rounds) at Dirichlet 0.1 and 0.5, seeds 0-2.

    .venv/bin/python benchmarks/scaffold.py [--seeds 0,1,2] [--alphas 0.1,0.5] [--set section.key=value ...]

The SGD learning rate is tuned once, the same way for every SGD variant: FedAvg-SGD at Dirichlet 0.5, seed 0, for
each of --sgd-lrs; the best final accuracy picks the rate all SGD variants (SCAFFOLD included) use. AdamW variants
use the method's default (3e-3), tuned by earlier studies. FedProx uses mu = fl.mu (0.01).
Every finished run keeps only its results.json, in benchmarks/studies/scaffold/<cell>/ (committed, so the study
resumes where it stopped, on any machine); table.md and table.csv (mean ± std over seeds) are rewritten after
every run. Cells already finished are not run again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402

OUT = Path(__file__).parent / "studies" / "scaffold"
VARIANTS = {
    "fedavg-adamw": ["fl.strategy='fedavg'"],
    "fedprox-adamw": ["fl.strategy='fedprox'"],
    "fedavg-sgd": ["fl.strategy='fedavg'", "fl.optimizer='sgd'"],
    "fedprox-sgd": ["fl.strategy='fedprox'", "fl.optimizer='sgd'"],
    "scaffold-sgd": ["fl.strategy='scaffold'", "fl.optimizer='sgd'"],
}


def cell(name: str, sets: list[str]) -> dict:
    """The finished results.json of cell `name` (run now if missing); the rest of the run folder is dropped."""
    import fedft
    from fedft.config import load_config

    folder = OUT / name
    done = folder / "results.json"
    if done.exists() and json.loads(done.read_text()).get("status") == "completed":
        return json.loads(done.read_text())
    if folder.exists():
        shutil.rmtree(folder)
    tmp = OUT / f".{name}.running"
    if tmp.exists():
        shutil.rmtree(tmp)
    result = fedft.run(load_config(None, [s.replace("'", '"') for s in sets]), tmp, log=print)
    folder.mkdir(parents=True)
    shutil.move(str(tmp / "results.json"), done)
    shutil.rmtree(tmp)
    print(f"{name}: accuracy {result.final['accuracy']:.4f}", flush=True)
    return json.loads(done.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--alphas", default="0.1,0.5")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sgd-lrs", default="0.1,0.3,1.0")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    common = ["data.partition='dirichlet'", "fl.precision='fp32'", *args.set]
    tuning = {lr: cell(f"tune-sgd-lr{lr}", [*common, *VARIANTS["fedavg-sgd"], "data.alpha=0.5", "fl.seed=0",
                                              f"fl.lr={lr}"])["final"]["accuracy"]
              for lr in map(float, args.sgd_lrs.split(","))}
    sgd_lr = max(tuning, key=tuning.get)
    print(f"SGD learning rate: {sgd_lr} (FedAvg-SGD, Dirichlet 0.5, seed 0: "
          + ", ".join(f"{lr:g} -> {a:.4f}" for lr, a in tuning.items()) + ")", flush=True)
    rows = []
    for alpha in map(float, args.alphas.split(",")):
        for name in args.variants.split(","):
            lr = [f"fl.lr={sgd_lr}"] if "sgd" in name else []
            accs, mbs = [], []
            for seed in map(int, args.seeds.split(",")):
                data = cell(f"{name}-a{alpha:g}-s{seed}", [*common, *VARIANTS[name], *lr, f"data.alpha={alpha}",
                                                           f"fl.seed={seed}"])
                accs.append(data["final"]["accuracy"])
                mbs.append(data["final"]["bytes_total"] / 1e6)
            rows.append({"alpha": alpha, "variant": name, "lr": sgd_lr if "sgd" in name else "3e-3 (default)",
                         "runs": len(accs), "accuracy": f"{100 * np.mean(accs):.1f} ± "
                         f"{100 * np.std(accs, ddof=1) if len(accs) > 1 else 0:.1f}",
                         "MB_sent": round(float(np.mean(mbs)), 1)})
            write_tables(OUT, rows)


if __name__ == "__main__":
    main()
