"""Cross-device scale: what many simulated clients cost to set up, per round, and in memory, over the same rows.

    .venv/bin/python benchmarks/scale.py [--rows 2000000] [--clients 1000,10000,100000,1000000]
                                          [--partitions iid,natural] [--out benchmarks/out/scale]

The data: synthetic text written once as a Parquet file (`--rows` rows of 3 to 8 words from a 2,000-word
vocabulary, 20 classes, a `user` column of `--clients`-many ids for the natural split), so every cell reads the same
rows. Each cell runs in a fresh process (peak memory is the process's ru_maxrss): tiny-bert + LoRA, 10 sampled
clients, one round of one local epoch, no evaluation of the test set beyond one batch-sized hold-out
(data.test_fraction = 0.0005). It prints:
- set-up seconds: reading, tokenising, splitting the rows over the clients and assembling the run (prepare +
  assemble), and of it the split alone (partition);
- round seconds: the one federated round (sampling, training 10 clients, aggregation, evaluation);
- peak RSS in MiB.
The table goes to --out/table.md and table.csv. Run it alone on the machine: the seconds are wall-clock.
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


def cell(data: Path, clients: int, partition: str) -> dict:
    """One measurement, in this (fresh) process."""
    import resource
    import time

    from fedft.api import assemble, prepare
    from fedft.config import load_config
    from fedft.data import partition as part
    from fedft.fl.loop import federated
    from fedft.fl.precision import cpu_name

    sets = [f'data.name="parquet:{data}"', "model.name=\"tiny-bert\"", f'data.partition="{partition}"',
            "data.test_fraction=0.0005", "fl.rounds=1", "fl.clients_per_round=10", "fl.precision=\"fp32\"",
            "model.max_length=16", "data.min_partition_size=0"]
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
    row = next(federated(b.fed))
    return {"partition": partition, "clients": len(exp.clients), "rows": int(exp.clients.sizes.sum()),
            "setup_s": round(setup, 1), "split_s": round(split["seconds"], 2),
            "round_s": round(time.perf_counter() - t1, 2), "sampled": row.sampled,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "cpu": cpu_name()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--clients", default="1000,10000,100000,1000000")
    ap.add_argument("--partitions", default="iid,natural")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "scale"))
    ap.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)  # data clients partition: run one cell here
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(Path(args.cell[0]), int(args.cell[1]), args.cell[2])))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in map(int, args.clients.split(",")):
        data = out / f"rows{args.rows}-users{n}.parquet"
        if not data.exists():
            make_data(data, args.rows, n)
        for partition in args.partitions.split(","):
            got = subprocess.run([sys.executable, __file__, "--cell", str(data), str(n), partition],
                                 capture_output=True, text=True)
            if got.returncode:
                print(got.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"cell {n} {partition} failed")
            rows.append(json.loads(got.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
            write_tables(out, rows)


if __name__ == "__main__":
    main()
