"""Every tuning method on the default text task (minilm, wordnet-nouns, 50 clients, 10 per round),
under IID and Dirichlet(0.5) partitions: trainable parameters, MB per client per round, final accuracy.

    .venv/bin/python benchmarks/methods_text.py [--rounds N] [--set section.key=value ...] [--out DIR]

Writes DIR/table.md and DIR/table.csv (default benchmarks/out/methods_text) and prints the table.
Each run's own folder (results.json, curves.png) is kept under DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedft.methods import METHODS

sys.path.insert(0, str(Path(__file__).parent))
from tables import run_variant, write_tables  # noqa: E402

PARTITIONS = {"iid": ["data.partition=iid"], "dirichlet-0.5": ["data.partition=dirichlet", "data.alpha=0.5"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--methods", default=",".join(METHODS.names()))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/methods_text")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for part, part_set in PARTITIONS.items():
        for method in args.methods.split(","):
            data = run_variant(out, f"{method}-{part}", [f"method.name='{method}'", f"fl.rounds={args.rounds}",
                                                         *part_set, *args.set])
            f = data["final"]
            rounds = len(data["rounds"])
            rows.append({
                "partition": part, "method": method, "trainable_params": f["trainable_params"],
                "share_%": round(100 * f["trainable_params"] / f["total_params"], 3),
                "MB_per_client_round": round(f["payload_bytes"] / 1e6, 4),
                "MB_total": round(f["bytes_total"] / 1e6, 1), "accuracy": round(f["accuracy"], 4),
                "lr": data["lr"], "rounds": rounds, "seconds": round(f["seconds"]),
            })
    write_tables(out, rows)

if __name__ == "__main__":
    main()
