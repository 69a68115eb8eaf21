"""How fast fedft trains clients, against the naive way and against the device's limit.

    .venv/bin/python benchmarks/engine.py                       # minilm, default text task, CPU
    .venv/bin/python benchmarks/engine.py --workload vit-b      # ViT-B/16 (random weights), 224 px, 100
                                                                #   clients x 256 images, batch 16: for a GPU

One federated round's local training (the clients sampled in round 1, from the same start), timed
several ways in this one process, for each method in --methods and at each precision in --precisions (default:
fp32, and bf16 where the device computes it natively, by torch's own check):
  engine   fedft's engine as `fedft run` uses it (fl.parallel_clients = auto)
  batched  fedft's cross-client batching with every sampled client in one computation
  naive    clients one after another, each on a deep copy of the model, uniformly random batches
           padded per batch (as a Hugging Face DataLoader with DataCollatorWithPadding gives), batch = client batch
  limit    the same model and method trained centrally on the same examples at --limit-batch
and, for --head-cache, `fedft run` with method head with the feature cache on and off (seconds per round
after the first). Prints examples/s and the ratios at each precision, and bf16/fp32 for each way; the last line
is `engine/naive=<x> engine/limit=<y>` (the lowest over the methods, at the precision `fl.precision = auto` picks).
(Flower's own simulation is measured by benchmarks/deploy.py, on fedft's ClientApp.)
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fedft
from fedft.api import assemble, prepare
from fedft.config import load_config
from fedft.fl.client import TrainConfig, load_state, make_optimizer, read_state, shuffled_batches, train_batches
from fedft.fl.messages import Instruction
from fedft.fl.precision import cpu_name, native_bf16, resolve
from fedft.fl.runners import Batched
from fedft.methods import trainable_parameters


def workload(name: str, method: str, extra: list[str], model_dir: str | None) -> list[str]:
    if name == "text":
        return [f'method.name="{method}"', *extra]
    return [f'model.name="{model_dir}"', 'data.name="fashion-mnist"', "data.image_size=224",
            "data.partition=iid", "data.num_clients=100", "data.train_per_class=2560", "data.test_per_class=10",
            "fl.batch_size=16", f'method.name="{method}"', *extra]


def vit_b_dir() -> str:
    """A ViT-B/16 (transformers' ViTConfig defaults: 224 px, 12 layers, hidden 768) with random weights."""
    from transformers import ViTConfig, ViTModel

    path = Path(tempfile.mkdtemp(prefix="fedft-vit-b-"))
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(path)
    return str(path)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def naive_round(exp, start, clients: list[np.ndarray], cfg: TrainConfig, seed: int) -> None:
    """Naive, but at the same precision as the engine."""
    rng = np.random.default_rng(seed)
    for idx in clients:
        model = copy.deepcopy(exp.model)  # each client gets its own copy, as a simulation usually does
        params = trainable_parameters(model)
        load_state(params, start)
        opt = make_optimizer(params, cfg)
        train_batches(model, params, exp.train, shuffled_batches(idx, cfg.batch_size, cfg.epochs, rng), opt,
                      precision=cfg.precision)
        read_state(params)
        del model


def limit_round(exp, start, pooled: np.ndarray, cfg: TrainConfig, batch: int, seed: int) -> None:
    load_state(exp.params, start)
    lengths = exp.train.lengths() if hasattr(exp.train, "lengths") else None
    batches = shuffled_batches(pooled, batch, cfg.epochs, np.random.default_rng(seed), lengths)
    train_batches(exp.model, exp.params, exp.train, batches, make_optimizer(exp.params, cfg), precision=cfg.precision)


def measure(args, method: str, model_dir: str | None, precision: str) -> dict:
    config = load_config(None, workload(args.workload, method, args.set, model_dir))
    exp = prepare(config)
    device = torch.device(args.device)
    exp.model.to(device)
    fl = config.fl
    runner = assemble(exp).fed.runner  # as `fedft run` trains the clients
    sampled = sorted(np.random.default_rng(0).choice(len(exp.clients), fl.clients_per_round, replace=False).tolist())
    clients = [exp.clients[c] for c in sampled]
    n = sum(len(c) * fl.local_epochs for c in clients)
    start = read_state(exp.params)
    cfg = runner.pool.cfg
    cfg.precision = precision
    instructions = [Instruction(c, start) for c in sampled]
    k = getattr(runner, "k", 1)
    ways = {
        "engine": lambda: runner.train(1, instructions),
        "batched": lambda: Batched(runner.pool, len(sampled)).train(1, instructions),
        "naive": lambda: naive_round(exp, start, clients, cfg, 1),
        "limit": lambda: limit_round(exp, start, np.concatenate(clients), cfg, args.limit_batch, 1),
    }
    if k == len(sampled):
        ways.pop("batched")  # the engine already is
    out = {"method": method, "examples": n, "parallel_clients": k, "precision": precision}
    for way, fn in ways.items():
        if args.warmup:
            fn()
        out[way] = n / timed(fn)
        print(f"  {method:6s} {precision} {way:8s} {out[way]:8.1f} examples/s", flush=True)
    return out


def head_cache(args, model_dir: str | None) -> dict:
    """Seconds per round of `fedft run` with method head, feature cache on and off (evaluation only at the end)."""
    out = {}
    for on in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(None, workload(args.workload, "head", args.set, model_dir) + [
                "fl.rounds=3", "fl.eval_every=100", f"fl.feature_cache={str(on).lower()}"])
            res = fedft.run(cfg, Path(tmp) / "run")
            secs = [r["seconds"] for r in res.rounds]
            out["on" if on else "off"] = secs
            print(f"  head cache {'on ' if on else 'off'}  seconds per round {[round(s, 2) for s in secs]} "
                  f"(round 3 includes the final evaluation)", flush=True)
    out["speedup_round2"] = out["off"][1] / out["on"][1]
    print(f"  head cache: round 2 {out['speedup_round2']:.1f}x faster with the cache", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("text", "vit-b"), default="text")
    ap.add_argument("--methods", default="lora,bias")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit-batch", type=int, default=128)
    ap.add_argument("--precisions", default="", help="e.g. fp32,bf16 (default: fp32, and bf16 where it is native)")
    ap.add_argument("--warmup", action="store_true", help="run each way once untimed first")
    ap.add_argument("--no-head-cache", dest="head_cache", action="store_false")
    ap.add_argument("--set", action="append", default=[], help="section.key=value, for every run")
    ap.add_argument("--out", default="benchmarks/out/engine.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model_dir = vit_b_dir() if args.workload == "vit-b" else None
    device = torch.device(args.device)
    native = native_bf16(device)
    precisions = args.precisions.split(",") if args.precisions else ["fp32"] + (["bf16"] if native else [])
    auto = resolve("auto", device).used
    print(f"workload {args.workload} on {args.device} ({cpu_name() if device.type == 'cpu' else args.device}, "
          f"native bf16: {native or 'no'}; {torch.get_num_threads()} threads), torch {torch.__version__}", flush=True)
    results = [measure(args, m, model_dir, p) for m in args.methods.split(",") for p in precisions]
    for r in results:
        r["engine/naive"], r["engine/limit"] = r["engine"] / r["naive"], r["engine"] / r["limit"]
        extra = f"  batched/naive={r['batched'] / r['naive']:.2f}" if "batched" in r else ""
        print(f"{r['method']} {r['precision']}: engine/naive={r['engine/naive']:.2f} "
              f"engine/limit={r['engine/limit']:.2f}{extra}")
    by = {(r["method"], r["precision"]): r for r in results}
    for m in args.methods.split(","):
        if (m, "fp32") in by and (m, "bf16") in by:
            a, b = by[(m, "fp32")], by[(m, "bf16")]
            print(f"{m} bf16/fp32: " + " ".join(f"{w}={b[w] / a[w]:.2f}" for w in ("engine", "batched", "naive", "limit")
                                                if w in a and w in b))
    cache = head_cache(args, model_dir) if args.head_cache else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"workload": args.workload, "device": args.device, "native_bf16": native,
                                          "methods": results, "head_cache": cache}, indent=2))
    at = [r for r in results if r["precision"] == auto] or results
    print(f"engine/naive={min(r['engine/naive'] for r in at):.2f} "
          f"engine/limit={min(r['engine/limit'] for r in at):.2f}")


if __name__ == "__main__":
    main()
