"""SCAFFOLD (SGD local steps, control variates) against FedAvg and FedProx with SGD and with AdamW, on the default
text task (minilm + LoRA, wordnet-nouns, 50 clients, 10 per round, 10 rounds) at Dirichlet 0.1 and 0.5, seeds 0-2.

    .venv/bin/python benchmarks/scaffold.py [--seeds 0,1,2] [--alphas 0.1,0.5] [--set section.key=value ...]

The SGD learning rate is tuned at each alpha, the same way for every SGD variant: FedAvg-SGD, seed 0, for each
rate of --sgd-lrs at that alpha; the best final accuracy picks the rate all SGD variants (SCAFFOLD included) use
there. SGD cells run earlier at another rate stay in the table, marked "not tuned here". AdamW variants use the
method's default (3e-3), tuned by earlier studies. FedProx uses mu = fl.mu (0.01).
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
    ap.add_argument("--sgd-lrs", default="0.5:0.1,0.3,1.0;0.1:0.03,0.1,0.3",
                    help="per Dirichlet alpha, the SGD rates tried (alpha:lr,lr;alpha:lr,...)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    common = ["data.partition='dirichlet'", "fl.precision='fp32'", *args.set]
    grid = {float(a): [float(x) for x in lrs.split(",")]
            for a, lrs in (part.split(":") for part in args.sgd_lrs.split(";"))}
    seeds = list(map(int, args.seeds.split(",")))

    def run(name: str, alpha: float, seed: int, lr: float | None) -> dict:
        tag = f"-lr{lr:g}" if lr is not None else ""
        sets = [*common, *VARIANTS[name], f"data.alpha={alpha}", f"fl.seed={seed}"]
        return cell(f"{name}-a{alpha:g}{tag}-s{seed}", sets + ([f"fl.lr={lr}"] if lr is not None else []))

    rows = []
    for alpha in map(float, args.alphas.split(",")):
        # Tuning: FedAvg-SGD, seed 0, at this alpha, each rate in the grid; the best final accuracy picks the rate
        # every SGD variant (SCAFFOLD included) uses at this alpha. The tuning runs are the seed-0 FedAvg-SGD cells.
        tuning = {lr: run("fedavg-sgd", alpha, seeds[0], lr)["final"]["accuracy"] for lr in grid[alpha]}
        sgd_lr = max(tuning, key=tuning.get)
        print(f"alpha {alpha:g}: SGD learning rate {sgd_lr:g} (FedAvg-SGD, seed {seeds[0]}: "
              + ", ".join(f"{lr:g} -> {a:.4f}" for lr, a in tuning.items()) + ")", flush=True)
        for name in args.variants.split(","):
            sgd = "sgd" in name
            lrs = [sgd_lr] if sgd else [None]
            # SGD cells already run at another rate (e.g. the rate tuned at the other alpha) stay in the table.
            if sgd:
                lrs += sorted({float(d.name.split("-lr")[1].rsplit("-s", 1)[0])
                               for d in OUT.glob(f"{name}-a{alpha:g}-lr*-s*") if (d / "results.json").exists()}
                              - {sgd_lr})
            for lr in lrs:
                if lr != sgd_lr and sgd and not all((OUT / f"{name}-a{alpha:g}-lr{lr:g}-s{s}" / "results.json").exists()
                                                    for s in seeds):
                    continue
                data = [run(name, alpha, s, lr) for s in seeds]
                accs = [d["final"]["accuracy"] for d in data]
                mbs = [d["final"]["bytes_total"] / 1e6 for d in data]
                rows.append({"alpha": alpha, "variant": name,
                             "lr": "3e-3 (default)" if not sgd else f"{lr:g}" + (" (tuned)" if lr == sgd_lr else
                                                                                   " (not tuned here)"),
                             "runs": len(accs), "accuracy": f"{100 * np.mean(accs):.1f} ± "
                             f"{100 * np.std(accs, ddof=1) if len(accs) > 1 else 0:.1f}",
                             "MB_sent": round(float(np.mean(mbs)), 1)})
                write_tables(OUT, rows)


if __name__ == "__main__":
    main()
