"""Write a benchmark's rows as table.csv and table.md (and print the markdown)."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path


def write_tables(out: Path, rows: list[dict]) -> None:
    cols = list(rows[0])
    with (out / "table.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in cols) + " |"
              for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run_variant(out: Path, name: str, sets: list[str]) -> dict:
    """results.json of the run `out/name` with config overrides `sets` (section.key=value, single quotes allowed for
    strings): reused when it finished earlier, else (re)run from scratch."""
    import fedft
    from fedft.config import load_config

    run_dir = out / name
    done = run_dir / "results.json"
    if not (done.exists() and json.loads(done.read_text()).get("status") == "completed"):
        if run_dir.exists():
            for f in sorted(run_dir.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
            run_dir.rmdir()
        t0 = time.time()
        fedft.run(load_config(None, [s.replace("'", '"') for s in sets]), run_dir, log=print)
        print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    return json.loads(done.read_text())
