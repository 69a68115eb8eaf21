"""`fedft sweep`: run a grid of experiments one after another, resumably, then summarise them.

The grid comes from the config file's [sweep] table (`grid = { "method.name" = ["bias", "lora"] }`,
`repeat = 3`) and from --grid key=v1,v2 (which wins). Rows that are not a product of values (a baseline and its
ablations) are named `variants`, each a set of overrides crossed with the grid:
`variants = { fedot = { "proxy.kind" = "fedot" }, fedpft = { "proxy.kind" = "fedpft" } }`. Repeat r runs with fl.seed + r. Each cell runs in
its own folder; a cell whose results.json says completed is skipped on a rerun, any other is run again
from scratch, so a sweep stopped by Ctrl-C or a crash loses no finished cell.

A grid value `inf` for dp.target_epsilon means no differential privacy (dp.mode = none) for that cell.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import tomllib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedft.api import check_names, client_dp
from fedft.config import Config, load_config, parse_override
from fedft.errors import UsageError


@dataclass
class Cell:
    name: str  # folder name
    overrides: list[str]  # section.key=value, applied after the file and --set
    config: Config


def read_sweep(path: str | None) -> tuple[dict[str, list], int, dict[str, dict]]:
    """The [sweep] table of a config file: (grid, repeat, variants)."""
    if path is None:
        return {}, 1, {}
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {str(p)!r} does not exist")
    try:
        table = tomllib.loads(p.read_text()).get("sweep", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    if not isinstance(table, dict):
        raise UsageError("[sweep] must be a table with grid = { \"section.key\" = [values] } and repeat = N")
    grid = table.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UsageError("[sweep] grid must be a table of \"section.key\" = [value, ...] (non-empty lists)")
    unknown = set(table) - {"grid", "repeat", "variants"}
    if unknown:
        raise UsageError(f"unknown key sweep.{sorted(unknown)[0]}; allowed in [sweep]: grid, repeat, variants")
    variants = table.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise UsageError("[sweep] variants must be a table of name = { \"section.key\" = value, ... }")
    repeat = table.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool):
        raise UsageError(f"sweep.repeat = {repeat!r}: must be an integer")
    return dict(grid), repeat, dict(variants)


def parse_grid(items: list[str]) -> dict[str, list]:
    """--grid method.name=bias,lora -> {"method.name": ["bias", "lora"]} (each value read as TOML)."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--grid {item!r}: expected section.key=value1,value2,...")
        key, values = item.split("=", 1)
        parsed = [parse_override(f"{key}={v.strip()}")[1] for v in values.split(",") if v.strip()]
        if not parsed:
            raise UsageError(f"--grid {item!r}: no values")
        grid[key.strip()] = parsed
    return grid


def cells(path: str | None, sets: list[str], grid: dict[str, list], repeat: int,
          variants: dict[str, dict] | None = None) -> list[Cell]:
    """Every (variant, grid point, repeat), each config built and checked now, so bad input fails before any run."""
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: must be >= 1")
    base_seed = load_config(path, sets).fl.seed
    keys = list(grid)
    out = []
    for variant, values in itertools.product(list(variants or {None: {}}), itertools.product(*(grid[k] for k in keys))):
        fixed = [f"{k}={_toml(v)}" for k, v in (variants or {}).get(variant, {}).items()]
        for r in range(repeat):
            overrides = list(fixed)
            for k, v in zip(keys, values):
                if k == "dp.target_epsilon" and _is_inf(v):
                    overrides.append('dp.mode="none"')
                else:
                    overrides.append(f"{k}={_toml(v)}")
            overrides.append(f"fl.seed={base_seed + r}")
            name = "__".join(([_slug(variant)] if variant is not None else [])
                             + [f"{k}-{_slug(v)}" for k, v in zip(keys, values)]) or "run"
            config = load_config(path, [*sets, *overrides])
            check_names(config)
            client_dp(config)  # an unreachable epsilon target fails now, not in the middle of the sweep
            out.append(Cell(f"{name}__seed-{base_seed + r}", overrides, config))
    names = [c.name for c in out]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise UsageError(f"two grid points share the folder name {twins[0]!r} (values that differ only in "
                         f"punctuation); rename the data or model paths")
    return out


def run_sweep(cells_: list[Cell], out: Path, run: Callable[[Config, Path], Any], log=print) -> list[Path]:
    """Run the cells not finished yet; returns every cell's folder."""
    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    for i, cell in enumerate(cells_, start=1):
        d = out / cell.name
        dirs.append(d)
        _check_same_experiment(d, cell)
        if _completed(d):
            log(f"[{i}/{len(cells_)}] {cell.name}: done earlier, skipped")
            continue
        if d.exists():
            shutil.rmtree(d)  # an interrupted or failed cell runs again from scratch
        log(f"[{i}/{len(cells_)}] {cell.name}")
        run(cell.config, d)
    return dirs


def run_sweep_parallel(cells_: list[Cell], out: Path, workers: int, log=print) -> list[Path]:
    """run_sweep with `workers` cells at a time, each in a fresh process with cores // workers threads.
    On 2 cores, two 1-thread runs side by side did 1.26x the work of one 2-thread run (benchmarks/README.md):
    small models leave a second thread idle much of the time. multiprocessing, not a library: nothing to add."""
    out.mkdir(parents=True, exist_ok=True)
    dirs, todo = [], []
    for i, cell in enumerate(cells_, start=1):
        d = out / cell.name
        dirs.append(d)
        _check_same_experiment(d, cell)
        if _completed(d):
            log(f"[{i}/{len(cells_)}] {cell.name}: done earlier, skipped")
        else:
            todo.append((i, cell, d))
    threads = max(1, _cores() // workers)
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=min(workers, max(1, len(todo))), max_tasks_per_child=1,
                               mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads,))
    running, failed = {}, None
    try:
        queue = list(todo)
        while queue or running:
            while queue and len(running) < workers:
                i, cell, d = queue.pop(0)
                if d.exists():
                    shutil.rmtree(d)  # an interrupted or failed cell runs again from scratch
                log(f"[{i}/{len(cells_)}] {cell.name} (started; {threads} thread{'s' * (threads > 1)})")
                running[pool.submit(_run_cell, cell.config, d)] = (i, cell)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                i, cell = running.pop(f)
                try:
                    f.result()
                except Exception as e:  # a failed cell stops the sweep, as it does with one worker; the cells
                    failed = failed or e  # running beside it finish first
                    queue.clear()
                    continue
                log(f"[{i}/{len(cells_)}] {cell.name}: finished")
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):  # a running cell stops at its next step and
            try:                                                  # keeps its finished rounds, as with one worker
                os.kill(p.pid, signal.SIGINT)
            except (ProcessLookupError, OSError):
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failed is not None:
        raise failed
    return dirs


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, _stop_once)
    signal.signal(signal.SIGTERM, _stop_once)


def _stop_once(signum, frame):
    """The first Ctrl-C stops the cell (it writes its finished rounds); the ones after it wait for that."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run_cell(config: Config, d: Path) -> None:
    from fedft import driver

    driver.run(config, d, progress=False)


def _check_same_experiment(d: Path, cell: Cell) -> None:
    """A folder from an earlier sweep must hold this very cell, not another experiment of the same name."""
    try:
        stored = json.loads((d / "results.json").read_text()).get("config")
    except (OSError, json.JSONDecodeError):
        return
    if stored is not None:  # filled with today's defaults: a key added since then is not a difference
        try:
            stored = Config.from_dict(stored, check=False).to_dict()
        except UsageError:
            pass
    if stored is not None and json.loads(json.dumps(stored)) != json.loads(json.dumps(cell.config.to_dict())):
        raise UsageError(f"{str(d)!r} holds a different experiment under the same name (another config file or "
                         f"--set); sweep into another --out folder, or put the difference in a --grid")


def _completed(d: Path) -> bool:
    try:
        return json.loads((d / "results.json").read_text()).get("status") == "completed"
    except (OSError, json.JSONDecodeError):
        return False


def _is_inf(v) -> bool:
    return (isinstance(v, float) and v == float("inf")) or (isinstance(v, str) and v.lower() in ("inf", "infinity"))


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def _slug(v) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(v)).strip("_") or "x"
