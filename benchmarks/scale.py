"""Cross-device scale: what many simulated clients cost to set up, per round, and in memory, over the same rows.

    .venv/bin/python benchmarks/scale.py [--rows 2000000] [--clients 1000,10000,100000,1000000]
                                          [--partitions iid,natural] [--out benchmarks/out/scale]

The data: synthetic text written once as a Parquet file (`--rows` rows of 3 to 8 words from a 2,000-word
vocabulary, 20 classes, a `user` column of `--clients`-many ids for the natural split), so every cell reads the same
rows. Each cell runs in a fresh process (peak memory is the process's ru_maxrss): tiny-bert + LoRA, 10 sampled
clients, --rounds rounds (default one) of one local epoch, no evaluation of the test set beyond one batch-sized hold-out
(data.test_fraction = 0.0005). It prints:
- set-up seconds: reading, tokenising, splitting the rows over the clients and assembling the run (prepare +
  assemble), and of it the split alone (partition);
- round seconds: the one federated round (sampling, training 10 clients, aggregation, evaluation);
- peak RSS in MiB.
With --strategy scaffold --rounds 100 --caps 0,2: SCAFFOLD's per-client controls after 100 rounds of 10 clients
(1,000 clients with state), kept in memory or capped at fl.client_state_mb (the rest on disk): peak memory against
the cap. The table goes to --out/table.md and table.csv. Run it alone on the machine: the seconds are wall-clock.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402

CLASSES = 20


def make_data(path: Path, rows: int, users: int) -> None:
    """Synthetic labelled text; the label decides which part of the vocabulary the words come from (learnable)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i}" for i in range(2000)])
    labels = rng.integers(0, CLASSES, rows)
    lengths = rng.integers(3, 9, rows)
    words = (labels[:, None] * 100 + rng.integers(0, 100, (rows, 8))) % len(vocab)
    texts = [" ".join(vocab[w[:n]]) for w, n in zip(words, lengths)]
    table = pa.table({"text": texts, "label": labels.astype(np.int64),
                      "user": rng.permutation(np.arange(rows) % users).astype(np.int64)})  # every id has rows
    pq.write_table(table, path)


def cell(data: Path, clients: int, partition: str, rounds: int = 1, strategy: str = "fedavg", cap: float = 0.0,
         model: str = "tiny-bert") -> dict:
    """One measurement, in this (fresh) process."""
    import resource
    import time

    from fedft.api import assemble, prepare
    from fedft.config import load_config
    from fedft.data import partition as part
    from fedft.fl.loop import federated
    from fedft.fl.precision import cpu_name

    sets = [f'data.name="parquet:{data}"', f'model.name="{model}"', f'data.partition="{partition}"',
            "data.test_fraction=0.0005", "fl.clients_per_round=10", "fl.precision=\"fp32\"",
            "model.max_length=16", "data.min_partition_size=0", f"fl.rounds={rounds}", f'fl.strategy="{strategy}"',
            f"fl.client_state_mb={cap}", f"fl.eval_every={rounds}"]
    if strategy == "scaffold":
        sets += ['fl.optimizer="sgd"', "fl.lr=0.1"]
    sets += [f"data.num_clients={clients}"] if partition != "natural" else ['data.client_column="user"']
    config = load_config(None, sets)
    split = {"seconds": 0.0}
    inner = part.partition

    def timed(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        split["seconds"] += time.perf_counter() - t
        return out

    import fedft.experiment as experiment
    experiment.partition = timed
    t0 = time.perf_counter()
    exp = prepare(config)
    b = assemble(exp)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for row in federated(b.fed):
        pass
    kept = getattr(b.fed.strategy, "controls", None)
    return {"partition": partition, "clients": len(exp.clients), "rows": int(exp.clients.sizes.sum()),
            "model": model, "strategy": strategy, "rounds": rounds, "state_cap_mb": cap,
            "clients_with_state": len(kept) if kept is not None else 0,
            "state_in_memory_mb": round(kept.memory_bytes / 1e6, 1) if kept is not None else 0,
            "setup_s": round(setup, 1), "split_s": round(split["seconds"], 2),
            "round_s": round((time.perf_counter() - t1) / rounds, 2), "sampled": row.sampled,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpu": cpu_name()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--clients", default="1000,10000,100000,1000000")
    ap.add_argument("--partitions", default="iid,natural")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "scale"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--strategy", default="fedavg", help="scaffold: every client that trains keeps a control")
    ap.add_argument("--caps", default="0", help="fl.client_state_mb values to run (0 = no cap)")
    ap.add_argument("--model", default="tiny-bert")
    ap.add_argument("--cell", nargs=7, help=argparse.SUPPRESS)  # run one cell in this process
    args = ap.parse_args()
    if args.cell:
        d, n, p, r, s, c, m = args.cell
        print(json.dumps(cell(Path(d), int(n), p, int(r), s, float(c), m)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in map(int, args.clients.split(",")):
        data = out / f"rows{args.rows}-users{n}.parquet"
        if not data.exists():
            make_data(data, args.rows, n)
        for partition in args.partitions.split(","):
            for cap in args.caps.split(","):
                got = subprocess.run([sys.executable, __file__, "--cell", str(data), str(n), partition,
                                      str(args.rounds), args.strategy, cap, args.model],
                                     capture_output=True, text=True)
                if got.returncode:
                    print(got.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"cell {n} {partition} failed")
                rows.append(json.loads(got.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
                write_tables(out, rows)


if __name__ == "__main__":
    main()
