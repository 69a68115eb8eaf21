"""Selective layer fine-tuning: which layers clients train, on the default text task (minilm, 6 layers,
wordnet-nouns, 50 clients, 10 per round, 10 rounds) under Dirichlet 0.1, each client with its own budget of 1-4
layers (drawn once, seeded), every selected layer trained whole (method.inner = full), head always trained.

    .venv/bin/python benchmarks/layers.py [--variants a,b,...] [--target 0.5] [--set section.key=value ...] [--out DIR]

Variants: top, bottom, random, gradient (lambda = 0: each client's own top layers by gradient norm),
gradient-lam<X> (the consistency term at lambda = X, e.g. gradient-lam0.1), full (every client trains
everything: full fine-tuning, no budget). Columns: final accuracy, best accuracy, first round at or above
--target (evaluated every 2 rounds, as by default), MB sent, seconds. Finished variants are reused.
Writes DIR/table.md and DIR/table.csv (default benchmarks/out/layers).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tables import run_variant, write_tables  # noqa: E402

COMMON = ["data.partition='dirichlet'", "data.alpha=0.1"]
LAYERS = ["method.name='layers'", "method.inner='full'", "method.budget_min=1", "method.budget_max=4"]


def settings(name: str) -> list[str]:
    if name == "full":
        return ["method.name='full'"]
    if name in ("top", "bottom", "random", "gradient"):
        return [*LAYERS, f"method.select='{name}'"]
    if name.startswith("gradient-lam"):
        return [*LAYERS, "method.select='gradient'", f"method.balance={float(name[len('gradient-lam'):])}"]
    raise SystemExit(f"unknown variant {name!r}: top, bottom, random, gradient, gradient-lam<X>, full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="top,bottom,random,gradient,gradient-lam0.1,full")
    ap.add_argument("--target", type=float, default=0.5, help="accuracy a variant must reach (rounds-to-target)")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/layers")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.variants.split(","):
        data = run_variant(out, name, [*COMMON, *settings(name), *args.set])
        evals = [(r["round"], r["accuracy"]) for r in data["rounds"] if r["accuracy"] is not None]
        reached = next((rnd for rnd, acc in evals if acc >= args.target), None)
        f = data["final"]
        rows.append({
            "variant": name, "accuracy": round(f["accuracy"], 4), "best": round(max(a for _, a in evals), 4),
            f"round_to_{args.target:g}": reached if reached is not None else f"> {len(data['rounds'])}",
            "MB_up": round(f["bytes_up"] / 1e6, 1), "MB_total": round(f["bytes_total"] / 1e6, 1),
            "seconds": round(f["seconds"]),
        })
        write_tables(out, rows)  # after every variant: an interrupted benchmark keeps its table so far


if __name__ == "__main__":
    main()
