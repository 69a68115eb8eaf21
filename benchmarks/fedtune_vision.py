"""The FedTune comparison on images: every tuning method on dinov2-small + Fashion-MNIST, federated under IID and
Dirichlet(0.1) partitions, against local-only and central training, and few-shot (data.shots 1, 4, 16).

    .venv/bin/python benchmarks/fedtune_vision.py [--clients 100] [--rounds 10] [--image-size 56]
        [--train-per-class N] [--test-per-class N] [--methods full,head,bias,lora,adapter,prompt]
        [--baseline-methods bias,lora] [--fewshot-methods head,bias,lora] [--set section.key=value ...]
        [--out DIR]

Writes DIR/table.md, DIR/table.csv and DIR/fedtune_vision.png (default benchmarks/out/fedtune_vision), keeps
each run's folder under DIR and skips runs that already finished, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import fedft
from fedft.config import load_config

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402


def cells(args) -> list[tuple[str, str, list[str]]]:
    """(setting, method, overrides) for every run of the study."""
    out = []
    for method in args.methods.split(","):
        out.append(("iid", method, ["data.partition=\"iid\""]))
        out.append(("dirichlet-0.1", method, ["data.partition=\"dirichlet\"", "data.alpha=0.1"]))
    for method in filter(None, args.baseline_methods.split(",")):
        for mode in ("local", "central"):
            # local-only: every client trains alone each round; its models are evaluated once, at the end
            extra = [f"fl.eval_every={args.rounds}"] if mode == "local" else []
            out.append((f"{mode} (dirichlet-0.1)", method, ["data.partition=\"dirichlet\"", "data.alpha=0.1",
                                                            f"fl.mode=\"{mode}\"", *extra]))
    for shots in (1, 4, 16):
        for method in filter(None, args.fewshot_methods.split(",")):
            out.append((f"{shots}-shot (iid)", method, ["data.partition=\"iid\"", f"data.shots={shots}"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2-small")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=56)
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=300)
    ap.add_argument("--min-partition-size", type=int, default=1,
                    help="Dirichlet(0.1) over 100 clients cannot promise the partitioner's usual 10 each")
    ap.add_argument("--methods", default="full,head,bias,lora,adapter,prompt")
    ap.add_argument("--baseline-methods", default="bias,lora")
    ap.add_argument("--fewshot-methods", default="head,bias,lora")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/out/fedtune_vision")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name=\"{args.model}\"", "data.name=\"fashion-mnist\"", f"data.num_clients={args.clients}",
              f"fl.clients_per_round={args.per_round}", f"fl.rounds={args.rounds}",
              f"data.image_size={args.image_size}", f"data.train_per_class={args.train_per_class}",
              f"data.test_per_class={args.test_per_class}",
              f"data.min_partition_size={args.min_partition_size}", *args.set]
    rows = []
    for setting, method, overrides in cells(args):
        run_dir = out / f"{method}-{setting.replace(' ', '').replace('(', '-').replace(')', '')}"
        results = run_dir / "results.json"
        if not (results.is_file() and json.loads(results.read_text()).get("status") == "completed"):
            if results.exists():
                results.unlink()  # an interrupted run: start it again
            t0 = time.time()
            fedft.run(load_config(None, [*common, f"method.name=\"{method}\"", *overrides]), run_dir)
            print(f"{setting:22s} {method:8s} {time.time() - t0:6.0f} s", flush=True)
        data = json.loads(results.read_text())
        f = data["final"]
        rows.append({"setting": setting, "method": method, "accuracy": round(f["accuracy"], 4),
                     "MB_per_client_round": round(f["payload_bytes"] / 1e6, 4),
                     "trainable_%": round(100 * f["trainable_params"] / f["total_params"], 3),
                     "MB_total": round(f["bytes_total"] / 1e6, 1), "lr": data["lr"],
                     "seconds": round(f["seconds"])})
    write_tables(out, rows)
    plot(out / "fedtune_vision.png", rows, args)


def plot(path: Path, rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    acc = {(r["setting"], r["method"]): r["accuracy"] for r in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(settings)), 4.5))
    for i, m in enumerate(methods):
        xs = [j + i * width for j, s in enumerate(settings) if (s, m) in acc]
        ax.bar(xs, [acc[(s, m)] for s in settings if (s, m) in acc], width, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(settings))], settings, rotation=15)
    ax.set(ylabel="test accuracy", title=f"{args.model} on Fashion-MNIST, {args.clients} clients, "
                                          f"{args.rounds} rounds, {args.image_size}px")
    ax.legend(ncol=3, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
