"""Seconds per round of a deployed run (Flower SuperLink + N SuperNodes on loopback, TLS) and of Flower's
simulation runtime (fl.backend = "flower-sim", N simulated SuperNodes) against the in-process engine on the same
config, and where a deployed round's time goes.

    .venv/bin/python benchmarks/deploy.py [--nodes 2,8] [--rounds 4] [--backends deployed,flower-sim]
        [--set section.key=value ...] [--out DIR]

The config: minilm + LoRA on wordnet-nouns capped at 80 training glosses per class (1,200 in all), N clients and
all N sampled every round, evaluation only after the last round (so rounds 2.. are training and messaging alone).
Each SuperNode is one client, with --threads = cores / N (at least 1). Columns: seconds of round 1 (a SuperNode prepares and caches its client there) and
the mean of the later rounds, for the engine and deployed; for deployed rounds also the time the server waited
for the replies, and per client the ClientApp process's start-up (Python, imports), loading the cached client,
and training; for flower-sim, round 1 and the later rounds as for the others, and the whole run's wall time
(SuperLink and Ray start-up included) beside the engine's. Writes DIR/table.md and DIR/table.csv (default
benchmarks/out/deploy).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402

FEDFT = str(Path(sys.executable).parent / "fedft")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployed(n: int, sets: list[str], work: Path, threads: int) -> tuple[dict, str]:
    """results.json and the log of `fedft deploy run` on a fresh SuperLink with n SuperNodes."""
    env = {**os.environ, "FLWR_HOME": str(work / "flwr"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", "FEDFT_CACHE": str(work / "cache")}
    certs, port = work / "certs", free_port()
    subprocess.run([FEDFT, "deploy", "certs", str(certs)], env=env, check=True, capture_output=True)
    procs = []
    try:
        with open(work / "processes.log", "w") as log:
            procs.append(subprocess.Popen([FEDFT, "deploy", "superlink", "--certs", str(certs), "--host", "127.0.0.1",
                                           "--port", str(port)], env=env, stdout=log, stderr=log,
                                          start_new_session=True))
            for i in range(n):
                procs.append(subprocess.Popen([FEDFT, "deploy", "supernode", "--superlink", f"127.0.0.1:{port}",
                                               "--certs", str(certs), "--partition-id", str(i), "--num-partitions",
                                               str(n), "--port", str(free_port()), "--threads",
                                               str(threads)], env=env, stdout=log, stderr=log,
                                              start_new_session=True))
            done = subprocess.run([FEDFT, "deploy", "run", "--superlink", f"127.0.0.1:{port}", "--certs", str(certs),
                                   "--out", str(work / "deployed"), *[a for s in sets for a in ("--set", s)]],
                                  env=env, capture_output=True, text=True)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            p.wait(timeout=30)
    if done.returncode != 0:
        raise SystemExit(f"deployed run with {n} SuperNodes failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((work / "deployed" / "results.json").read_text()), done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="2,8")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--backends", default="deployed,flower-sim", help="what to compare with the engine")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/deploy")
    args = ap.parse_args()
    import fedft
    from fedft.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        sets = ["data.train_per_class=80", f"data.num_clients={n}", f"fl.clients_per_round={n}",
                f"fl.rounds={args.rounds}", f"fl.eval_every={args.rounds}", *args.set]
        backends = args.backends.split(",")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            eng = [r["seconds"] for r in fedft.run(load_config(None, sets), Path(tmp) / "run").rounds]
            row = {"supernodes": n, "engine_round1_s": round(eng[0], 1), "engine_later_s": later_mean(eng),
                   "engine_wall_s": round(time.perf_counter() - t0, 1)}
            if "deployed" in backends:
                record, log = deployed(n, sets, Path(tmp), max(1, (os.cpu_count() or 1) // n))
                secs = [r["seconds"] for r in record["rounds"]]
                parts = [tuple(map(float, m)) for m in re.findall(r"clients in ([\d.]+) s; per client ([\d.]+) s "
                                                                  r"start-up, ([\d.]+) s loading, ([\d.]+) s training", log)]
                later = np.array(parts[1:] or parts)
                row.update({"deployed_round1_s": round(secs[0], 1), "deployed_later_s": later_mean(secs),
                            "reply_wait_s": round(float(later[:, 0].mean()), 1),
                            "client_startup_s": round(float(later[:, 1].mean()), 1),
                            "client_load_s": round(float(later[:, 2].mean()), 1),
                            "client_train_s": round(float(later[:, 3].mean()), 1)})
            if "flower-sim" in backends:
                os.environ["FEDFT_CACHE"] = str(Path(tmp) / "cache")  # the simulated nodes' prepared clients
                t0 = time.perf_counter()
                secs = [r["seconds"] for r in fedft.run(load_config(None, [*sets, 'fl.backend="flower-sim"']),
                                                        Path(tmp) / "sim").rounds]
                row.update({"sim_round1_s": round(secs[0], 1), "sim_later_s": later_mean(secs),
                            "sim_wall_s": round(time.perf_counter() - t0, 1)})
        rows.append(row)
        print(rows[-1], flush=True)
        write_tables(out, rows)


def later_mean(secs: list[float]) -> float:
    """Mean seconds of rounds 2 .. last-1 (the last one evaluates)."""
    return round(float(np.mean(secs[1:-1] or secs)), 1)


if __name__ == "__main__":
    main()
