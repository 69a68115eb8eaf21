"""One row per headline finding of the four papers: what the paper reports, what fedft measured (mean ± std over
the seeds of the study named), and whether it holds here.

    .venv/bin/python benchmarks/findings.py            # writes benchmarks/studies/findings.md (and prints it)

Each finding compares two cells of a study under benchmarks/studies/<study>/ (the `fedft sweep` folders of
configs/findings_*.toml and the scripted studies), read from their cells' results.json, never from a table typed by
hand. A claim "A beats B" holds when mean(A) - mean(B) > 2 SE, SE = sqrt(sd_A^2/n_A + sd_B^2/n_B); it is contradicted
when B beats A by the same margin, and otherwise "not resolved" (the seeds cannot tell the two apart). A claim "A
keeps up with B" (PEFT close to full fine-tuning) holds unless B beats A by more than 2 SE. A finding whose cells
have fewer than 3 finished seeds says so instead of a verdict.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STUDIES = Path(__file__).parent / "studies"


@dataclass(frozen=True)
class Finding:
    paper: str
    claim: str
    published: str
    study: str  # folder under benchmarks/studies
    a: dict  # flat config filters (section.key -> value) of the cell that should win / keep up
    b: dict
    kind: str = "beats"  # beats | keeps_up
    metric: str = "accuracy"  # a key of results.json "final"


DIR = {"data.partition": "dirichlet", "data.alpha": 0.5}
FINDINGS = [
    Finding("FedTune", "bias tuning is the best PEFT method on a strong pre-trained model (text, Dirichlet 0.5)",
            "bias best with a strong backbone (ViT-B/CLIP)", "findings_methods",
            {"method.name": "bias", **DIR}, {"method.name": "lora", **DIR}),
    *(Finding("FedTune", f"FL beats each client training alone with {m} (personalised accuracy)",
              "FL > local-only, which over-fits", "findings_local",
              {"method.name": m, "fl.mode": "federated"}, {"method.name": m, "fl.mode": "local"},
              metric="personal_accuracy") for m in ("lora", "bias")),
    Finding("FedTune", "CLIP beats ViT and holds up better few-shot", "CLIP > ViT", "", {}, {}),
    Finding("FedPEFT", "LoRA keeps up with full fine-tuning (IID) sending < 1% of the bytes",
            "PEFT close to full at well under 1% of the bytes", "findings_methods",
            {"method.name": "lora", "data.partition": "iid"}, {"method.name": "full", "data.partition": "iid"},
            kind="keeps_up"),
    Finding("FedPEFT", "LoRA keeps up with full fine-tuning under label skew (Dirichlet 0.5)",
            "PEFT holds up under non-IID data", "findings_methods",
            {"method.name": "lora", **DIR}, {"method.name": "full", **DIR}, kind="keeps_up"),
    Finding("FedPEFT", "LoRA keeps up with full fine-tuning once full has converged (40 rounds, Dirichlet 0.5)",
            "PEFT close to full at convergence", "findings_convergence",
            {"method.name": "lora"}, {"method.name": "full"}, kind="keeps_up"),
    Finding("FedPEFT", "bias tuning keeps up with full fine-tuning once full has converged (40 rounds, Dirichlet 0.5)",
            "PEFT close to full at convergence", "findings_convergence",
            {"method.name": "bias"}, {"method.name": "full"}, kind="keeps_up"),
    Finding("FedPEFT", "LoRA beats full fine-tuning at client dropout 0.5",
            "PEFT robust to client dropout", "findings_dropout",
            {"method.name": "lora", "fl.dropout": 0.5}, {"method.name": "full", "fl.dropout": 0.5}),
    Finding("FedPEFT", "LoRA beats full fine-tuning under DP at epsilon 3",
            "PEFT degrades less than full under DP", "findings_privacy",
            {"method.name": "lora", "method.ffa": False, "dp.target_epsilon": 3.0},
            {"method.name": "full", "dp.target_epsilon": 3.0}),
    Finding("FFA-LoRA", "FFA-LoRA beats LoRA under DP at epsilon 3", "FFA-LoRA more stable under DP noise",
            "findings_privacy", {"method.ffa": True, "dp.target_epsilon": 3.0},
            {"method.name": "lora", "method.ffa": False, "dp.target_epsilon": 3.0}),
    Finding("FedPFT", "FedPFT beats FedOT (IID, alpha 16)", "SST-2 91.6 vs 90.4, QNLI 87.5 vs 83.9 (BERT)",
            "findings_fedpft", {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 10,
                                "data.partition": "iid", "method.alpha": 16.0},
            {"proxy.kind": "fedot", "data.partition": "iid", "method.alpha": 16.0}),
    Finding("FedPFT", "FedPFT keeps up with LoRA on the full model (IID, alpha 16)", "SST-2 91.6 vs 91.6 (BERT)",
            "findings_fedpft", {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 10,
                                "data.partition": "iid", "method.alpha": 16.0},
            {"proxy.kind": "none", "data.partition": "iid", "method.alpha": 16.0}, kind="keeps_up"),
    Finding("FedPFT", "layer-level distillation helps (IID, alpha 16)", "ablation: both alignments needed",
            "findings_fedpft", {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 10,
                                "data.partition": "iid", "method.alpha": 16.0},
            {"proxy.kind": "fedpft", "proxy.distill_steps": 0, "data.partition": "iid", "method.alpha": 16.0}),
    Finding("FedPFT", "neuron-level alignment helps (IID, alpha 16)", "ablation: both alignments needed",
            "findings_fedpft", {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 10,
                                "data.partition": "iid", "method.alpha": 16.0},
            {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 0, "data.partition": "iid",
             "method.alpha": 16.0}),
    Finding("FedPFT", "neuron-level alignment beats the same steps spent on more layer-level distillation",
            "ablation: both alignments needed", "findings_fedpft",
            {"proxy.kind": "fedpft", "proxy.distill_steps": 1000, "proxy.align_every": 10,
             "data.partition": "iid", "method.alpha": 16.0},
            {"proxy.kind": "fedpft", "proxy.distill_steps": 1100, "proxy.align_every": 0,
             "data.partition": "iid", "method.alpha": 16.0}),
    Finding("Selective layers", "gradient selection beats random layers at the same budgets",
            "gradient-based selection > fixed/random", "findings_layers",
            {"method.name": "layers", "method.select": "gradient", "method.balance": ("!=", 0.0)},
            {"method.name": "layers", "method.select": "random"}),
    Finding("Selective layers", "the consistency term (best lambda) beats lambda 0",
            "regularising towards consistent layers helps", "findings_layers",
            {"method.name": "layers", "method.select": "gradient", "method.balance": ("!=", 0.0)},
            {"method.name": "layers", "method.select": "gradient", "method.balance": 0.0}),
]


def flat(config: dict) -> dict:
    return {f"{s}.{k}": v for s, keys in config.items() for k, v in keys.items()}


def cells(study: str) -> list[dict]:
    """Every finished results.json under benchmarks/studies/<study> (cell folders, any depth one)."""
    out = []
    for f in sorted((STUDIES / study).glob("*/results.json")) if study else []:
        record = json.loads(f.read_text())
        if record.get("status") == "completed":
            out.append(record)
    return out


def matches(config: dict, filters: dict) -> bool:
    for k, want in filters.items():
        have = config.get(k)
        if isinstance(want, tuple) and want[0] == "!=":
            if have == want[1]:
                return False
        elif have != want:
            return False
    return True


def verdict(a: list[float], b: list[float], kind: str) -> tuple[str, float, float]:
    """(holds | contradicted | not resolved, difference of means, its standard error)."""
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    if kind == "keeps_up":
        return ("contradicted" if diff < -2 * se else "holds"), diff, se
    if diff > 2 * se:
        return "holds", diff, se
    return ("contradicted" if diff < -2 * se else "not resolved"), diff, se


def pick(records: list[dict], filters: dict, metric: str) -> list[float]:
    vals = [r["final"].get(metric) for r in records if matches(flat(r["config"]), filters)]
    return [float(v) for v in vals if v is not None]


def row(f: Finding) -> dict:
    base = {"paper": f.paper, "claim": f.claim, "published": f.published}
    if not f.study:
        return {**base, "fedft (A vs B)": "cannot be measured here (no CLIP weights reachable)", "verdict": "—"}
    records = cells(f.study)
    a, b = pick(records, f.a, f.metric), pick(records, f.b, f.metric)
    if min(len(a), len(b)) < 3:
        return {**base, "fedft (A vs B)": f"not measured yet ({len(a)} and {len(b)} of 3 seeds in {f.study})",
                "verdict": "—"}
    v, diff, se = verdict(a, b, f.kind)
    show = lambda xs: f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs, ddof=1):.1f}"  # noqa: E731
    return {**base, "fedft (A vs B)": f"{show(a)} vs {show(b)} (n={len(a)}, {len(b)}; diff {100 * diff:+.1f} ± "
                                      f"{100 * se:.1f} SE; {f.study})", "verdict": v}


def main() -> None:
    rows = [row(f) for f in FINDINGS]
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (STUDIES / "findings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
