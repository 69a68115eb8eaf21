"""Natural clients against a drawn split of the same rows: Debian package descriptions, each labelled with its archive
section, each held by its real maintainer (a team or a person), the way a federation of maintainers would hold them.

    .venv/bin/python benchmarks/natural.py [--seeds 0,1,2] [--set section.key=value ...]

The data comes from this machine's apt lists (`apt-cache dumpavail`, Debian bookworm main; the Packages file's date
is recorded): one row per binary package whose section is one of SECTIONS, text = its one-line description, label =
the section, client = the Maintainer field. Duplicate descriptions are dropped (a description seen in two sections,
or twice, is ambiguous or repeated); maintainers with fewer than MIN_PER_CLIENT such packages are left out; each
section keeps at most PER_CLASS rows (a seeded choice), so the run's size is that of the default task. The maintainer
is a real client attribute: the Perl group holds the perl section, the Games team games, and so on, a label skew no
Dirichlet draw chooses.

Runs: minilm + LoRA, 10 rounds of 10 clients, `data.partition = "natural"` (one client per maintainer) against
`data.partition = "dirichlet"` (alpha 0.5) over the same rows with the same number of clients, seeds 0-2, fp32.
Cells in benchmarks/studies/natural/<cell>/results.json (committed; the study resumes from them), table.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from tables import write_tables  # noqa: E402

OUT = Path(__file__).parent / "studies" / "natural"
DATA = Path(__file__).parent / "out" / "debian_sections.csv"
SECTIONS = ["python", "perl", "haskell", "rust", "golang", "javascript", "java", "ruby", "science", "net", "games",
            "sound"]
MIN_PER_CLIENT = 20
PER_CLASS = 1000


def packages() -> list[dict]:
    """(package, section, maintainer, description) of every package apt knows, sorted by package name."""
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    out = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line.startswith(" ") and ":" in line:
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        if {"Package", "Section", "Maintainer", "Description"} <= set(fields):
            out.append({"package": fields["Package"], "section": fields["Section"].split("/")[-1],
                        "maintainer": fields["Maintainer"].split("<")[0].strip(), "text": fields["Description"]})
    return sorted(out, key=lambda r: r["package"])


def build() -> dict:
    """Write DATA (text,label,client) and return what it holds."""
    rows = [r for r in packages() if r["section"] in SECTIONS]
    seen = Counter(r["text"] for r in rows)
    rows = [r for r in rows if seen[r["text"]] == 1]
    per_client = Counter(r["maintainer"] for r in rows)
    rows = [r for r in rows if per_client[r["maintainer"]] >= MIN_PER_CLIENT]
    rng = np.random.default_rng(0)
    keep = []
    for s in SECTIONS:
        idx = [i for i, r in enumerate(rows) if r["section"] == s]
        keep += sorted(rng.permutation(idx)[:PER_CLASS].tolist())
    rows = [rows[i] for i in sorted(keep)]
    per_client = Counter(r["maintainer"] for r in rows)
    rows = [r for r in rows if per_client[r["maintainer"]] >= 2]  # a client needs a row left after the test split
    DATA.parent.mkdir(parents=True, exist_ok=True)
    with DATA.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "client"])
        w.writerows([r["text"], r["section"], r["maintainer"]] for r in rows)
    release = next(Path("/var/lib/apt/lists").glob("*debian_dists_bookworm_InRelease"), None)
    date = next((ln.split(":", 1)[1].strip() for ln in release.read_text().splitlines() if ln.startswith("Date:")),
                "?") if release else "?"
    return {"rows": len(rows), "clients": len({r["maintainer"] for r in rows}), "apt_lists_date": date,
            "sections": dict(Counter(r["section"] for r in rows))}


def cell(name: str, sets: list[str]) -> dict:
    import fedft
    from fedft.config import load_config

    folder = OUT / name
    done = folder / "results.json"
    if done.exists() and json.loads(done.read_text()).get("status") == "completed":
        return json.loads(done.read_text())
    tmp = OUT / f".{name}.running"
    shutil.rmtree(tmp, ignore_errors=True)
    result = fedft.run(load_config(None, sets), tmp, log=print)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.move(str(tmp / "results.json"), done)
    shutil.rmtree(tmp)
    print(f"{name}: accuracy {result.final['accuracy']:.4f}", flush=True)
    return json.loads(done.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    info = build()
    print(f"data: {info}", flush=True)
    (OUT / "data.json").write_text(json.dumps(info, indent=1) + "\n")
    common = [f'data.name="csv:{DATA}"', 'fl.precision="fp32"', *args.set]
    rows = []
    for split, sets in (("natural", ['data.partition="natural"', "data.num_clients=0"]),
                        ("dirichlet-0.5", ['data.partition="dirichlet"', "data.alpha=0.5",
                                           f"data.num_clients={info['clients']}"])):
        runs = [cell(f"{split}-s{s}", [*common, *sets, f"fl.seed={s}"]) for s in map(int, args.seeds.split(","))]
        acc = [r["final"]["accuracy"] for r in runs]
        pers = [r["final"].get("personal_accuracy") or float("nan") for r in runs]
        sizes = sizes_of(runs[0])
        rows.append({"split": split, "clients": sizes["count"], "runs": len(runs),
                     "accuracy": f"{100 * np.mean(acc):.1f} ± {100 * np.std(acc, ddof=1) if len(acc) > 1 else 0:.1f}",
                     "personal_accuracy": f"{100 * np.mean(pers):.1f} ± "
                                          f"{100 * np.std(pers, ddof=1) if len(pers) > 1 else 0:.1f}",
                     "client_size_min_median_max": "/".join(str(int(sizes[k])) for k in ("min", "median", "max"))})
        write_tables(OUT, rows)


def sizes_of(record: dict) -> dict:
    """The client-size summary of a results.json (cells run before clients.parquet kept the list instead)."""
    if "clients" in record:
        return record["clients"]
    s = record["client_sizes"]
    return {"count": len(s), "min": np.min(s), "median": np.median(s), "max": np.max(s)}


if __name__ == "__main__":
    main()
