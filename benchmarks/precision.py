"""Every method at fp32 and at bf16 autocast, on the default text task (minilm, wordnet-nouns, 50 clients, 10 per
round, 10 rounds, Dirichlet 0.5), seeds 0, 1, 2: does bf16 cost accuracy, and how much time does it save?

    .venv/bin/python benchmarks/precision.py [--methods lora,head,...] [--seeds 0,1,2] [--set section.key=value ...]
    .venv/bin/python benchmarks/precision.py --table-only     # the tables from the finished pairs; runs nothing

For each method and seed the fp32 run and the bf16 run go back to back, so their seconds are measured on the same
machine in the same session; each cell records the CPU it ran on, and a time ratio is only formed from a pair run on
one CPU model. Run it alone on the machine: the seconds are wall-clock. An fp32 cell whose exact config another
study already finished (the methods sweep of configs/findings_methods.toml, at Dirichlet 0.5) is copied from there,
with that run's own seconds and CPU.

Every finished run keeps only its results.json (plus the study's own "study" entry: whole-call seconds and the CPU),
in benchmarks/studies/precision/<cell>/, committed, so the study resumes where it stopped, on any machine; table.md
and table.csv are rewritten after every run. A finding (bf16 costs accuracy) needs the fp32 - bf16 gap to exceed
twice its standard error over the seeds and also at least FLOOR (0.25 points, about 11 of the 4,500 test glosses):
paired seeds follow nearly the same path at both precisions, so the standard error of their gap can be a hundredth
of a point, and a gap of two test glosses would pass the first rule alone (LoRA: 0.044 ± 0.013 points).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402

OUT = Path(__file__).parent / "studies" / "precision"
FLOOR = 0.0025  # accuracy (0.25 points): the smallest gap that counts as bf16 costing accuracy (see above)
METHODS = {  # name -> config overrides; cheap and default first
    "lora": ["method.name='lora'"],
    "head": ["method.name='head'"],
    "bias": ["method.name='bias'"],
    "prompt": ["method.name='prompt'"],
    "prompt-deep": ["method.name='prompt'", "method.deep=true"],
    "adapter": ["method.name='adapter'"],
    "dora": ["method.name='dora'"],
    "layers": ["method.name='layers'", "method.select='gradient'"],
    "fedpft": ["method.name='lora'", "proxy.kind='fedpft'"],
    "scaffold": ["method.name='lora'", "fl.strategy='scaffold'", "fl.optimizer='sgd'", "fl.lr=0.3"],
    "full": ["method.name='full'"],
}


def machine() -> dict:
    import torch

    from fedft.fl.precision import cpu_name, native_bf16

    return {"cpu": cpu_name(), "native_bf16": native_bf16(torch.device("cpu")), "threads": torch.get_num_threads()}


def cell(name: str, sets: list[str]) -> dict:
    """The finished results.json of cell `name` (run now if missing); the rest of the run folder is dropped."""
    import fedft
    from fedft.config import load_config

    folder = OUT / name
    if (record := finished(name)) is not None:
        return record
    if folder.exists():
        shutil.rmtree(folder)
    tmp = OUT / f".{name}.running"
    if tmp.exists():
        shutil.rmtree(tmp)
    config = load_config(None, [s.replace("'", '"') for s in sets])
    twin = same_run_elsewhere(config.to_dict())
    if twin is not None:  # the very same experiment, finished by another study (the findings' methods sweep)
        record = json.loads(twin.read_text())
        record["study"] = {"wall_seconds": round(record["final"]["seconds"], 1), "reused_from": str(twin.parent),
                           "cpu": record.get("machine", {}).get("cpu", "unknown"), "native_bf16": None,
                           "threads": record.get("machine", {}).get("threads")}
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(record, indent=1))
        print(f"{name}: reused {twin.parent}", flush=True)
        return record
    t0 = time.perf_counter()
    result = fedft.run(config, tmp, log=print)
    wall = time.perf_counter() - t0
    record = json.loads((tmp / "results.json").read_text())
    record["study"] = {"wall_seconds": round(wall, 1), **machine()}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(tmp)
    print(f"{name}: accuracy {result.final['accuracy']:.4f}, {wall:.0f} s", flush=True)
    return record


def finished(name: str) -> dict | None:
    """Cell `name`'s results.json if its run completed, else None."""
    done = OUT / name / "results.json"
    record = json.loads(done.read_text()) if done.exists() else {}
    return record if record.get("status") == "completed" else None


def same_run_elsewhere(config: dict) -> Path | None:
    """A finished results.json of another study under benchmarks/studies/ with exactly this config (a deterministic
    run on the CPU gives the same numbers), so no cell is run twice."""
    for f in sorted(OUT.parent.glob("*/*/results.json")):
        if f.parent.parent == OUT:
            continue
        try:
            record = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("status") == "completed" and record.get("config") == config:
            return f
    return None


def verdict(gap: np.ndarray, bound: float) -> str:
    """Is the mean paired gap above `bound`? (n/a for one seed: no standard error)"""
    return ("yes" if gap.mean() > bound else "no") if len(gap) > 1 else "n/a"


def mean_std(xs: list[float]) -> str:
    return f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs, ddof=1) if len(xs) > 1 else 0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--table-only", action="store_true", help="write the tables from the finished cells; run none")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    common = ["data.partition='dirichlet'", "data.alpha=0.5", *args.set]
    rows = []
    for method in args.methods.split(","):
        runs = {"fp32": [], "bf16": []}
        for seed in map(int, args.seeds.split(",")):
            names = {prec: f"{method}-{prec}-s{seed}" for prec in runs}
            if args.table_only:
                pair = {prec: finished(name) for prec, name in names.items()}
                if None in pair.values():
                    continue
            else:
                pair = {prec: cell(name, [*common, *METHODS[method], f"fl.seed={seed}", f"fl.precision='{prec}'"])
                        for prec, name in names.items()}
            for prec in runs:
                runs[prec].append(pair[prec])
        if not runs["fp32"]:
            continue
        acc = {p: [r["final"]["accuracy"] for r in rs] for p, rs in runs.items()}
        gap = np.array(acc["fp32"]) - np.array(acc["bf16"])  # paired by seed
        se = np.std(gap, ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else float("nan")
        same_cpu = [(a, b) for a, b in zip(runs["fp32"], runs["bf16"]) if a["study"]["cpu"] == b["study"]["cpu"]]
        ratio = [b["study"]["wall_seconds"] / a["study"]["wall_seconds"] for a, b in same_cpu]
        rows.append({
            "method": method, "seeds": len(gap),
            "fp32_accuracy": mean_std(acc["fp32"]), "bf16_accuracy": mean_std(acc["bf16"]),
            "gap_points": f"{100 * gap.mean():+.2f} ± {100 * se:.2f} (SE)",
            "beyond_2_se": verdict(gap, 2 * se),
            "bf16_costs_accuracy": verdict(gap, max(2 * se, FLOOR)),
            "fp32_seconds": round(float(np.mean([r["study"]["wall_seconds"] for r in runs["fp32"]]))),
            "bf16_seconds": round(float(np.mean([r["study"]["wall_seconds"] for r in runs["bf16"]]))),
            "bf16/fp32_time": f"{np.mean(ratio):.2f}" if ratio else "n/a",
            "cpu": "; ".join(sorted({r["study"]["cpu"] for rs in runs.values() for r in rs})),
        })
        write_tables(OUT, rows)


if __name__ == "__main__":
    main()
