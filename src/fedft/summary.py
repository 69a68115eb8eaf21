"""Tables and plots over many finished runs (a sweep, or any runs): `fedft report` and the end of `fedft sweep`.

Runs are grouped by the config keys that differ between them (the seed aside), so repeats of one grid
point become one row with the mean and standard deviation of their final accuracy.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedft.errors import UsageError
from fedft.report import atomic_write

SEED_KEY = "fl.seed"


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path is a run folder (has results.json) or a folder of run folders. A run named twice (a sweep's cell
    and the sweep) is counted once."""
    runs, seen = [], set()
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / "results.json").is_file())
        else:
            raise UsageError(f"{str(p)!r} is not a run folder (no results.json) nor a folder of runs")
        for run in found:
            if run.resolve() not in seen:
                seen.add(run.resolve())
                runs.append(run)
    return runs


def load_finished(runs: list[Path]) -> list[dict]:
    out = []
    for run in runs:
        try:
            record = json.loads((run / "results.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("status") == "completed":
            record["_dir"] = str(run)
            out.append(record)
    return out


def flat(config: dict) -> dict:
    return {f"{s}.{k}": v for s, keys in config.items() for k, v in keys.items()}


def varying_keys(records: list[dict]) -> list[str]:
    configs = [flat(r["config"]) for r in records]
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if k != SEED_KEY and len({json.dumps(c.get(k)) for c in configs}) > 1]


def summarise(records: list[dict]) -> tuple[list[str], list[dict]]:
    """(grid keys, one row per grid point: its key values, repeats, accuracy mean/std, MB, epsilon, ...)."""
    keys = varying_keys(records)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = flat(r["config"])
        groups.setdefault(tuple(json.dumps(c.get(k)) for k in keys), []).append(r)
    rows = []
    for _, members in sorted(groups.items(), key=lambda kv: [_order(json.loads(v)) for v in kv[0]]):
        c = flat(members[0]["config"])
        acc = [m["final"]["accuracy"] for m in members]
        eps = [m["final"].get("epsilon") for m in members]
        row = {k: _show(c.get(k)) for k in keys}
        row.update({
            "repeats": len(members),
            "accuracy_mean": round(float(np.mean(acc)), 4),
            "accuracy_std": round(float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0, 4),
            "MB_total": round(float(np.mean([m["final"]["bytes_total"] for m in members])) / 1e6, 2),
            "MB_per_client_round": round(members[0]["final"]["payload_bytes"] / 1e6, 4),
            "trainable_params": members[0]["final"]["trainable_params"],
            "epsilon": "inf" if eps[0] is None else round(float(np.mean(eps)), 3),
            "dropped_share": round(_dropped_share(members), 3),
            "precision": _each(m.get("precision", {}).get("used", "fp32") for m in members),
            "cpu": _each(m.get("machine", {}).get("cpu", "unknown") for m in members),
            "runs": ";".join(Path(m["_dir"]).name for m in members),
        })
        rows.append(row)
    return keys, rows


def write_summary(out: Path, records: list[dict]) -> list[str]:
    """summary.csv, summary.md and the plots into `out`; returns the file names written."""
    if not records:
        raise UsageError("no finished runs to summarise (none has status 'completed')")
    out.mkdir(parents=True, exist_ok=True)
    keys, rows = summarise(records)
    cols = list(rows[0])

    def write_csv(p: Path) -> None:
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)

    atomic_write(out / "summary.csv", write_csv)
    shown = [c for c in cols if c != "runs"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        cells = [f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}" if c == "accuracy_mean" else str(r[c])
                 for c in shown if c != "accuracy_std"]
        lines.append("| " + " | ".join(cells) + " |")
    lines[0] = "| " + " | ".join(c if c != "accuracy_mean" else "accuracy (mean ± std)"
                                 for c in shown if c != "accuracy_std") + " |"
    lines[1] = "|" + "---|" * (len(shown) - 1)
    atomic_write(out / "summary.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    return ["summary.csv", "summary.md", *plot_summary(out, keys, records, rows), *plot_selections(out, records)]


def plot_selections(out: Path, records: list[dict]) -> list[str]:
    """Method layers: a heat map of which layers the clients trained, per run (selection.png for one run,
    selection-<run folder>.png for several)."""
    from fedft.report import plot_selection

    chosen = [r for r in records if r.get("layers")]
    written = []
    for r in chosen:
        name = "selection.png" if len(records) == 1 else f"selection-{Path(r['_dir']).name}.png"
        plot_selection(out / name, r["rounds"], r["layers"]["num_layers"], f"{Path(r['_dir']).name}: clients per layer")
        written.append(name)
    return written


def plot_summary(out: Path, keys: list[str], records: list[dict], rows: list[dict]) -> list[str]:
    """curves.png and frontier.png, and epsilon.png / dropout.png when the runs sweep those (fedft.plots)."""
    from fedft import plots

    names = [plots.cell_label({k: row[k] for k in keys}) for row in rows]
    colour = plots.colours(names)
    groups: dict[str, list[dict]] = {name: [] for name in names}
    for r in records:
        c = flat(r["config"])
        groups[plots.cell_label({k: _show(c.get(k)) for k in keys})].append(r)
    heading = plots.title(flat(records[0]["config"]), keys)
    plots.curves(out / "curves.png", groups, colour, heading)
    plots.frontier(out / "frontier.png", rows, names, colour, heading)
    written = ["curves.png", "frontier.png"]
    for key, name, xlabel in (("epsilon", "epsilon.png", "epsilon spent (DP)"),
                              ("fl.dropout", "dropout.png", "client dropout rate")):
        values = {row["epsilon"] if key == "epsilon" else row.get(key) for row in rows}
        if len(values) < 2 or (key == "fl.dropout" and key not in keys):
            continue
        series: dict[str, list[tuple]] = {}
        others = [k for k in keys if k not in (key, "dp.target_epsilon", "dp.mode", "dp.noise_multiplier")]
        for row in rows:
            x = row["epsilon"] if key == "epsilon" else row[key]
            series.setdefault(plots.cell_label({k: row[k] for k in others}), []).append(
                (x, row["accuracy_mean"], row["accuracy_std"]))
        plots.against(out / name, series, xlabel, key == "epsilon", heading)
        written.append(name)
    return written


def _order(v) -> tuple:
    """Numbers before text, numbers by value: the same row order from any listing of the runs."""
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))


def _show(v) -> str:
    return str(v)


def _each(values) -> str:
    """The distinct values of a row's runs, in first-seen order ("fp32", or "fp32; bf16" for a mixed row)."""
    return "; ".join(dict.fromkeys(values))


def _dropped_share(members: list[dict]) -> float:
    sampled = sum(x.get("sampled", 0) for m in members for x in m["rounds"])
    lost = sum(x.get("dropped", 0) + x.get("late", 0) for m in members for x in m["rounds"])
    return lost / sampled if sampled else 0.0
