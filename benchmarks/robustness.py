"""Robust aggregation under attack: final accuracy on the default text task (minilm, wordnet-nouns, 50 clients,
Dirichlet 0.5, LoRA, 10 rounds of 10 clients) with a share of malicious clients (fixed, seeded) that send
sign-flipped updates (fl.attack), for FedAvg against the robust strategies, and FedAvg behind the server's
"far out of line" check (fedavg+ratio: fl.max_norm_ratio = --ratio).

    .venv/bin/python benchmarks/robustness.py [--fractions 0,0.1,0.2,0.3]
        [--strategies fedavg,median,trimmed_mean,krum,fedavg+ratio] [--ratio 3] [--attack sign_flip]
        [--set section.key=value ...] [--out DIR]

Krum assumes as many malicious clients per round as the fraction implies (fl.krum_byzantine) and averages the
clients_per_round - 2 * that many best-scored updates (Multi-Krum). Columns: accuracy, best accuracy, updates
sampled from malicious clients in the run, and the updates the server rejected from malicious and from honest
clients. Finished runs are reused. Writes DIR/table.md and DIR/table.csv
(default benchmarks/out/robustness).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tables import run_variant, write_tables  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", default="0,0.1,0.2,0.3")
    ap.add_argument("--strategies", default="fedavg,median,trimmed_mean,krum,fedavg+ratio")
    ap.add_argument("--ratio", type=float, default=3.0, help="fl.max_norm_ratio of the fedavg+ratio rows")
    ap.add_argument("--attack", default="sign_flip")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/robustness")
    args = ap.parse_args()
    from fedft.config import load_config
    from fedft.fl.validate import malicious_clients

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for frac in [float(f) for f in args.fractions.split(",")]:
        for strategy in args.strategies.split(","):
            cfg = load_config(None, [s.replace("'", '"') for s in args.set])
            per_round = cfg.fl.clients_per_round
            f = int(round(frac * per_round))
            name, _, check = strategy.partition("+")
            sets = [f"fl.strategy='{name}'", f"fl.malicious_fraction={frac}", f"fl.attack='{args.attack}'",
                    f"fl.krum_byzantine={f}", f"fl.krum_keep={max(1, per_round - 2 * f)}",
                    *([f"fl.max_norm_ratio={args.ratio}"] if check == "ratio" else []), *args.set]
            data = run_variant(out, f"{strategy}-{frac:g}", sets)
            bad = malicious_clients(cfg.data.num_clients, frac, cfg.fl.seed)
            rejected = [x for r in data["rounds"] for x in (r.get("rejected") or [])]
            evals = [r["accuracy"] for r in data["rounds"] if r["accuracy"] is not None]
            rows.append({"malicious": frac, "strategy": strategy, "accuracy": round(data["final"]["accuracy"], 4),
                         "best": round(max(evals), 4),
                         "malicious_updates": sum(len(set(r["clients"]) & bad) for r in data["rounds"]),
                         "rejected_malicious": sum(x["client"] in bad for x in rejected),
                         "rejected_honest": sum(x["client"] not in bad for x in rejected)})
            write_tables(out, rows)


if __name__ == "__main__":
    main()
