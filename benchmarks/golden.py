"""Golden results for a restructure: run a fixed set of small experiments before a change, again after it, and
compare the two bit for bit (results.json without its timings, and every exported tensor).

    python benchmarks/golden.py run OUT [--only NAME,...] [--tiny CSV]   # every case into OUT/<name>/
    python benchmarks/golden.py compare BEFORE AFTER           # lists every difference; exit 1 if any

Results are bit-identical only on the same machine (CPU kernels differ between processors): save the goldens and
compare them in one session. Every case pins fl.precision = "fp32".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SMALL = ["model.name=minilm", "data.train_per_class=40", "data.test_per_class=20", "data.num_clients=10",
         "fl.clients_per_round=4", "fl.rounds=2", "fl.precision=fp32"]
TINY_IMAGES = ["data.name=digits", "data.train_per_class=30", "data.test_per_class=10", "data.image_size=28",
               "data.num_clients=6", "fl.clients_per_round=3", "fl.rounds=2", "fl.precision=fp32"]

CASES: dict[str, list[str]] = {
    "default": ["fl.precision=fp32"],
    **{f"method-{m}": SMALL + [f"method.name={m}"] for m in ("full", "head", "bias", "lora", "adapter", "prompt")},
    "method-prompt-deep": SMALL + ["method.name=prompt", "method.deep=true"],
    "method-lora-ffa": SMALL + ["method.ffa=true"],
    "head-nocache": SMALL + ["method.name=head", "fl.feature_cache=false"],
    "fedprox": SMALL + ["fl.strategy=fedprox", "fl.mu=0.1"],
    "fedadam": SMALL + ["fl.strategy=fedadam"],
    "median": SMALL + ["fl.strategy=median"],
    "trimmed-mean": SMALL + ["fl.strategy=trimmed_mean"],
    "batched": SMALL + ["fl.parallel_clients=2"],
    "batched-bias-prox": SMALL + ["fl.parallel_clients=3", "method.name=bias", "fl.strategy=fedprox"],
    "local": SMALL + ["fl.mode=local", "data.num_clients=4"],
    "central": SMALL + ["fl.mode=central"],
    "dropout-stragglers": SMALL + ["fl.dropout=0.3", "fl.stragglers=0.3", "fl.deadline=10", "fl.min_clients=2",
                                   "fl.rounds=3"],
    "fp16-comm": SMALL + ["comm.dtype=float16"],
    "fedpft": SMALL + ["proxy.kind=fedpft", "proxy.distill_steps=20", "proxy.align_every=1", "proxy.align_steps=5"],
    "fedot": SMALL + ["proxy.kind=fedot"],
    "layers-gradient": SMALL + ["method.name=layers", "method.select=gradient", "method.budget_min=1",
                                "method.budget_max=3", "fl.rounds=3", "method.reselect_every=2"],
    "layers-lora-top": SMALL + ["method.name=layers", "method.inner=lora", "method.select=top"],
    "clientdp-fedavgm": SMALL + ["dp.mode=client", "dp.noise_multiplier=0.3", "dp.adaptive_clip=true",
                                 "fl.strategy=fedavgm", "fl.rounds=3"],
    "clientdp-target": SMALL + ["dp.mode=client", "dp.target_epsilon=20"],
    "sampledp": SMALL + ["dp.mode=sample", "dp.target_epsilon=8"],
    "krum-signflip": SMALL + ["fl.strategy=krum", "fl.malicious_fraction=0.2", "fl.krum_byzantine=1", "fl.clients_per_round=6",
                              "fl.krum_keep=2"],
    "norm-ratio": SMALL + ["fl.malicious_fraction=0.2", "fl.attack=scale", "fl.attack_scale=50",
                           "fl.max_norm_ratio=3", "fl.max_update_norm=100"],
    "tiny-vit-prompt": TINY_IMAGES + ["model.name=tiny-vit", "method.name=prompt"],
    "tiny-dinov2-lora": TINY_IMAGES + ["model.name=tiny-dinov2"],
    "tiny-clip-adapter": TINY_IMAGES + ["model.name=tiny-clip", "method.name=adapter"],
    "flower-sim": SMALL + ["fl.backend=\"flower-sim\"", "data.num_clients=4", "fl.clients_per_round=2"],
}

IGNORED = {"seconds", "startup_seconds", "machine",  # wall-clock figures and the machine/date differ on every run
           "exported"}  # the list of exported files (the export that loads without fedft added some)


def run(out: Path, only: list[str] | None, tiny: str = "") -> None:
    """With `tiny` (a CSV file with columns text,label): the text cases on tiny-bert and that file, in seconds."""
    fedft = Path(sys.executable).with_name("fedft")
    for name, sets in CASES.items():
        if only and name not in only:
            continue
        if tiny:
            if name == "default" or "image" in " ".join(sets) or "digits" in " ".join(sets):
                continue
            sets = [s for s in sets if not s.startswith(("model.name", "data.train_per_class", "data.test_per"))]
            sets = ["model.name=\"tiny-bert\"", f"data.name=\"csv:{tiny}\"", "data.min_partition_size=2"] + sets
        folder = out / name
        if (folder / "results.json").exists():
            print(f"{name}: done already", flush=True)
            continue
        cmd = [str(fedft), "run", "--out", str(folder)] + [a for s in sets for a in ("--set", s)]
        print(f"{name}: {' '.join(cmd[1:])}", flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: FAILED (exit {done.returncode})\n{done.stderr[-2000:]}", flush=True)


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k in IGNORED:
                continue
            if k not in b:
                out.append(f"{path}.{k}: removed")
            elif k not in a:
                out.append(f"{path}.{k}: added ({json.dumps(b[k])[:80]})")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items -> {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {json.dumps(a)[:80]} -> {json.dumps(b)[:80]}"]


def tensors(folder: Path) -> dict:
    """Every exported tensor, by a name that does not depend on the export's layout: the adapter's keys without
    the classifier's `backbone.` (the plain-backbone export drops it), and the head under `head:` wherever it was
    saved (modules_to_save in the adapter, or head.safetensors). backbone.safetensors repeats trainable.safetensors."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        rel = str(f.relative_to(folder))
        if rel == "backbone.safetensors":
            continue
        for k, v in load_file(str(f)).items():
            if rel == "head.safetensors":
                name = f"head:{k}"
            elif (rel.startswith("adapter/") and ".head." in k) or (rel == "trainable.safetensors" and
                                                                   k.startswith("head.")):
                name = f"head:{k.rsplit('.', 1)[1]}"
            else:
                name = f"{rel}:{k.replace('base_model.model.backbone.', 'base_model.model.')}"
            out[name] = v
    return out


def compare(before: Path, after: Path) -> int:
    bad = 0
    for folder in sorted(p for p in before.iterdir() if (p / "results.json").exists()):
        other = after / folder.name
        if not (other / "results.json").exists():
            print(f"{folder.name}: missing in {after}")
            bad += 1
            continue
        diffs = differences(json.loads((folder / "results.json").read_text()),
                            json.loads((other / "results.json").read_text()))
        ta, tb = tensors(folder), tensors(other)
        for k in sorted(set(ta) | set(tb)):
            if k not in ta or k not in tb:
                diffs.append(f"tensor {k}: only in {'after' if k in tb else 'before'}")
            elif ta[k].shape != tb[k].shape or not bool((ta[k] == tb[k]).all()):
                diffs.append(f"tensor {k}: differs")
        print(f"{folder.name}: {'bit-identical' if not diffs else f'{len(diffs)} differences'}")
        for d in diffs[:20]:
            print(f"   {d}")
        bad += bool(diffs)
    return 1 if bad else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--only", default="")
    r.add_argument("--tiny", default="", help="a CSV (text,label): text cases on tiny-bert and that file")
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.out, [n for n in args.only.split(",") if n] or None, args.tiny)
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
