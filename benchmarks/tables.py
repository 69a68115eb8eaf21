"""Write a benchmark's rows as table.csv and table.md (and print the markdown)."""
from __future__ import annotations

import csv
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
