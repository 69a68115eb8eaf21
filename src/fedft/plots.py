"""The plots of `fedft report` / `fedft sweep`: accuracy against rounds and against MB sent, with the spread over seeds
drawn as a band (mean ± one standard deviation), the accuracy/communication frontier, and accuracy against epsilon or
dropout. Every cell (grid point) keeps one colour in every plot; legends name full config keys (`method.name=lora`);
titles name the model, data and method; round axes have whole-number ticks; nothing is cut off at the edge
(figures are saved with a tight bounding box, legends sit outside the axes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fedft.report import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    """PNG with a tight bounding box (legends and labels outside the axes are kept whole), written atomically."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    _plt().close(fig)


def cell_label(values: dict[str, str]) -> str:
    """`method.name=lora, data.partition=iid` (full keys), or "run" when nothing varies."""
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "run"


def colours(labels: list[str]) -> dict[str, tuple]:
    """One colour per cell label, from the labels in table order: the same cell has the same colour everywhere."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(labels)}


def title(flat_config: dict, keys: list[str]) -> str:
    """`minilm on wordnet-nouns, method lora, dirichlet 0.5`: model, data and method, leaving out what varies."""
    parts = [flat_config.get("model.name", "?") if "model.name" not in keys else "model per cell"]
    parts[0] += f" on {flat_config.get('data.name', '?')}" if "data.name" not in keys else ", data per cell"
    if "method.name" not in keys:
        parts.append(f"method {flat_config.get('method.name')}")
    if "data.partition" not in keys and flat_config.get("data.partition"):
        part = flat_config["data.partition"]
        alpha = part == "dirichlet" and "data.alpha" not in keys
        parts.append(f"{part} {flat_config.get('data.alpha')}" if alpha else part)
    return ", ".join(parts)


def round_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def log_axis(ax) -> None:
    """Log x axis labelled in plain numbers (20, 50, 100), not 2x10^1."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:g}"))


def band(ax, xs, runs: list[list[float]], colour, name: str) -> None:
    """Mean line with markers and a mean ± std band over the runs (no band for a single run)."""
    ys = np.asarray(runs, dtype=float)
    mean = ys.mean(axis=0)
    ax.plot(xs, mean, marker="o", markersize=3, color=colour, label=name)
    if len(runs) > 1:
        std = ys.std(axis=0, ddof=1)
        ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)


def outside_legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def curves(path: Path, groups: dict[str, list[dict]], colour: dict[str, tuple], heading: str,
           metric: str = "accuracy") -> None:
    """Accuracy (or the task's `metric`) against round (left) and against cumulative MB sent on a log axis (right),
    one band per cell over its runs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, members in groups.items():
        per_run = []
        for m in members:
            total, pts = 0, {}
            for r in m["rounds"]:
                total += r["bytes_up"] + r["bytes_down"]
                if r.get(metric) is not None:
                    pts[r["round"]] = (total / 1e6, r[metric])
            per_run.append(pts)
        common = sorted(set.intersection(*(set(p) for p in per_run)))
        if not common:
            continue
        band(a, common, [[p[t][1] for t in common] for p in per_run], colour[name], name)
        band(b, [float(np.mean([p[t][0] for p in per_run])) for t in common],
             [[p[t][1] for t in common] for p in per_run], colour[name], name)
    n = max(len(m) for m in groups.values())
    spread = f"mean ± std over {n} seeds" if n > 1 else "one run"
    a.set(xlabel="round", ylabel=f"test {metric}", title=f"{metric} per round ({spread})")
    b.set(xlabel="MB sent (up + down, cumulative, log)", ylabel=f"test {metric}", title=f"{metric} against MB sent")
    round_axis(a)
    log_axis(b)  # methods' payloads differ by orders of magnitude (LoRA vs full): on a linear axis one squashes the other
    for ax in (a, b):
        ax.grid(alpha=0.3)
    outside_legend(b)
    fig.suptitle(heading)
    save(fig, path)


def frontier(path: Path, rows: list[dict], names: list[str], colour: dict[str, tuple], heading: str) -> None:
    """Final accuracy (mean ± std) against MB sent in the run, log scale, one marker per cell."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row, name in zip(rows, names):
        ax.errorbar(row["MB_total"], row["accuracy_mean"], yerr=row["accuracy_std"], fmt="o", capsize=3,
                    color=colour[name], label=name)
    log_axis(ax)
    ax.set(xlabel="MB sent in the run (log)", ylabel="final test accuracy (mean ± std)",
           title=f"accuracy against communication\n{heading}")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    save(fig, path)


def against(path: Path, series: dict[str, list[tuple]], xlabel: str, log: bool, heading: str) -> None:
    """Final accuracy (mean ± std) against one swept value (epsilon, dropout), a line per group of the other keys;
    x = "inf" (no DP) is drawn to the right of every finite value."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    finite = [float(x) for pts in series.values() for x, _, _ in pts if x != "inf"]
    inf_x = max(finite) * 2 if finite else 1.0
    colour = colours(list(series))
    for name, pts in series.items():
        xs = [inf_x if x == "inf" else float(x) for x, _, _ in pts]
        order = np.argsort(xs)
        ax.errorbar(np.array(xs)[order], np.array([p[1] for p in pts])[order],
                    yerr=np.array([p[2] for p in pts])[order], marker="o", capsize=3, color=colour[name], label=name)
    if log:
        log_axis(ax)
    note = " (rightmost point: no DP)" if any(x == "inf" for pts in series.values() for x, _, _ in pts) else ""
    ax.set(xlabel=xlabel, ylabel="final test accuracy (mean ± std)", title=f"{heading}{note}")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    save(fig, path)
