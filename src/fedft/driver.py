"""Driving a run: assemble the federation from the experiment (every registered part installs what its setting
asks for), go through the rounds, and keep the results record (results.json after every round, the checkpoint,
rounds.csv, curves.png and the export at the end)."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from fedft.config import Config
from fedft.errors import UsageError
from fedft.experiment import Experiment, prepare
from fedft.fl import comm
from fedft.fl.channel import Channel
from fedft.fl.client import TrainConfig
from fedft.fl.hooks import Attack, Availability, Validation
from fedft.fl.loop import MODES, Federation
from fedft.fl.parts import PARTS, Build
from fedft.fl.runners import OneByOne, Pool
from fedft.fl.strategies import STRATEGIES
from fedft.methods.base import count_parameters
from fedft.registry import discover
from fedft import plots
from fedft.report import CLIENTS_TABLE, write_clients, write_csv, write_json

PART_PACKAGES = ("fedft.fl", "fedft.methods", "fedft.proxy")  # where run parts register themselves


@dataclass
class Result:
    config: dict
    rounds: list[dict]
    final: dict
    out_dir: Path | None


def assemble(exp: Experiment, tick: Callable[[], None] = lambda: None, log=None, remote=None,
             resume: dict | None = None) -> Build:
    """The federation of a prepared experiment: FedAvg-shaped defaults, then every run part in order. `remote(exp)`,
    where given, is the runner that trains the clients elsewhere (fedft.deploy: on Flower SuperNodes)."""
    config, fl = exp.config, exp.config.fl
    cfg = TrainConfig(fl.local_epochs, fl.batch_size, exp.lr, fl.weight_decay, 0.0, fl.group_by_length,
                      exp.precision.used, exp.task.loss, fl.optimizer, fl.momentum)
    pool = Pool(exp.model, exp.params, exp.train, exp.clients, cfg, fl.seed, tick)
    strategy = STRATEGIES.get(fl.strategy, "fl.strategy")(fl, len(exp.clients))
    fed = Federation(exp.params, len(exp.clients), fl, strategy, OneByOne(pool),
                     Channel(config.comm.dtype, config.comm.error_feedback), evaluate=lambda: None,
                     hooks=[Availability(fl, exp.clients.sizes), Attack(fl, len(exp.clients)),
                            Validation(fl)], tick=tick, resume=resume)
    b = Build(exp, pool, fed, exp.test, {"feature_cache": None, "dp": None}, log=log or (lambda line: None))
    profiles = b.profiles = exp.task.profiles(exp.train, exp.clients)  # what the personal score weighs by
    fed.evaluate = lambda cid=None: exp.task.evaluate(exp.model, b.test, precision=pool.cfg.precision,
                                                      profiles=_of(profiles, cid))
    for package in PART_PACKAGES:
        discover(package)
    for _, _, install in PARTS:
        install(b)
    pool.client = fed.strategy.client_side()
    if remote is not None:
        fed.runner = remote(exp)
    fed.hooks.sort(key=lambda h: h.order)
    return b


def _of(profiles, cid):
    """All clients' profiles (cid None: the global model as every client sees it), or client cid's alone."""
    return profiles if profiles is None or cid is None else profiles[cid: cid + 1]


def resumable(config: Config) -> str | None:
    """Why a run of this config cannot be resumed from a checkpoint (None: it can)."""
    if config.fl.mode != "federated":
        return f"fl.mode = {config.fl.mode!r} (only federated runs keep checkpoints)"
    return None


def resume_config(run_dir: str | Path) -> Config:
    """The config of the interrupted run in run_dir (fedft run --resume)."""
    from fedft.fl import checkpoint

    folder = Path(run_dir)
    if not (folder / "results.json").is_file():
        raise UsageError(f"--resume {str(folder)!r}: no results.json there (not a run folder)")
    try:
        record = json.loads((folder / "results.json").read_text())
        config = Config.from_dict(record["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--resume {str(folder)!r}: results.json is damaged ({type(e).__name__}); the run cannot "
                         f"continue from it") from None
    if record.get("status") == "completed":
        raise UsageError(f"--resume {str(folder)!r}: that run already completed")
    if (why := resumable(config)):
        raise UsageError(f"--resume {str(folder)!r}: a run with {why} cannot be resumed")
    if not (folder / checkpoint.NAME).is_file():
        done = len(record.get("rounds") or [])
        if done:
            raise UsageError(f"--resume {str(folder)!r}: {checkpoint.NAME} is missing (results.json holds {done} "
                             f"finished round{'s' * (done > 1)}, but the state to continue from is gone); start "
                             f"the run again")
        raise UsageError(f"--resume {str(folder)!r}: no {checkpoint.NAME} (the run stopped before its first round "
                         f"ended); start it again")
    return config


def _short(value) -> str:
    return repr(value)[:40]


def check_checkpoint_config(ckpt: dict, config: Config, folder: Path) -> None:
    """The config a checkpoint was written under must be the run's (results.json's) config."""
    where = f"--resume {str(folder)!r}"
    if "config" in ckpt and ckpt["config"] != config.to_dict():
        old, new = ckpt["config"], config.to_dict()
        sec, key = next((s, k) for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k])
        raise UsageError(f"{where}: results.json's config differs from the one the checkpoint was written under "
                         f"({sec}.{key} = {_short(old.get(sec, {}).get(key))} then, {_short(new[sec][key])} now); "
                         f"was the config edited? Restore it, or start a new run")


def check_checkpoint(ckpt: dict, fed: Federation, folder: Path) -> None:
    """A checkpoint must hold what this config's run keeps: the same trainable tensors and the same parts."""
    where = f"--resume {str(folder)!r}"
    try:
        saved, parts = ckpt["global"], ckpt["parts"]
        ckpt["round"], ckpt["sampler"], ckpt["rows"]
    except (KeyError, TypeError):
        raise UsageError(f"{where}: the checkpoint is from another fedft version or damaged; start the run "
                         f"again") from None
    names = set(fed.params)
    if set(saved) != names:
        diff = sorted(names ^ set(saved))
        raise UsageError(f"{where}: the checkpoint's trainable parameters do not match the config in results.json "
                         f"({len(diff)} differ, e.g. {diff[0]!r}); was the config edited? Restore it, or start "
                         f"a new run")
    for k, p in fed.params.items():
        if tuple(saved[k].shape) != tuple(p.shape):
            raise UsageError(f"{where}: parameter {k!r} has shape {tuple(saved[k].shape)} in the checkpoint but "
                             f"{tuple(p.shape)} under the config in results.json; was the config edited?")
    if set(parts) != set(fed.parts()):
        raise UsageError(f"{where}: the checkpoint was written by a run with other features "
                         f"({', '.join(sorted(set(parts) ^ set(fed.parts())))}); was the config edited?")


def run(config: Config, out_dir: str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None, remote=None, resume: bool = False) -> Result:
    """Run the experiment; write results.json, rounds.csv, curves.png and the trained parameters to out_dir
    (default runs/<timestamp>). results.json is rewritten after every round, so an interrupted run keeps
    its finished rounds. `remote(experiment)`, where given, makes the runner that trains the sampled clients
    elsewhere (fedft.deploy: on Flower SuperNodes); everything else runs here as in a simulation."""
    from fedft.fl import checkpoint

    out = Path(out_dir) if resume else _check_out_dir(out_dir)
    if config.fl.backend == "flower-sim" and remote is None:  # Flower's runtime calls this function in its ServerApp
        from fedft.deploy.simulation import simulate

        simulate(config, out, log, resume)
        record = json.loads((out / "results.json").read_text())
        return Result(record["config"], record["rounds"], record["final"], out)
    ckpt = checkpoint.load(out) if resume else None
    if ckpt is not None:
        check_checkpoint_config(ckpt, config, out)
    exp = prepare(config, log)
    fl = config.fl
    steps = fl.rounds * (len(exp.clients) if fl.mode == "local" else 1 if fl.mode == "central"
                         else fl.clients_per_round)
    bar = _progress_bar(steps, progress)
    try:
        b = assemble(exp, bar.update, log, remote, ckpt)  # calibrating DP noise may fail: before anything is written
        if ckpt is not None:
            check_checkpoint(ckpt, b.fed, out)
    except BaseException:
        bar.close()
        raise
    (log or (lambda line: None))(start_line(config, len(exp.clients), exp.precision, exp.data_report))
    out.mkdir(parents=True, exist_ok=True)
    write_clients(out / CLIENTS_TABLE, exp.clients, exp.clients.names)
    payload = len(comm.encode({k: p.detach() for k, p in exp.params.items()}, config.comm.dtype))
    record = {
        "config": config.to_dict(), "status": "running", "lr": exp.lr, "model_source": exp.model_source,
        "classes": exp.classes, "num_train": len(exp.train), "num_test": len(exp.test),
        "clients": {**exp.clients.summary(), "table": CLIENTS_TABLE}, "precision": _precision_record(exp.precision, remote),
        "machine": _machine(), **({"data": exp.data_report} if exp.data_report else {}), **b.record,
        "rounds": [], "final": None,
    }
    final = {"trainable_params": sum(p.numel() for p in exp.params.values()),
             "total_params": count_parameters(exp.model), "payload_bytes": payload, **b.final}
    for hook in b.fed.hooks:
        record.update(hook.describe())
    keep = resumable(config) is None  # write a checkpoint after every round
    if ckpt is not None:
        record["rounds"] = ckpt["rows"]
        (log or (lambda line: None))(f"resuming after round {ckpt['round']} of {fl.rounds}")
        before = _read_json(out / "results.json").get("precision")
        if before and before.get("used") != record["precision"]["used"]:  # auto, resumed on another processor
            record["precision"]["before_resume"] = before
            (log or (lambda line: None))(f"the first {ckpt['round']} rounds ran in {before['used']}; this machine "
                                         f"continues in {record['precision']['used']}")
    started, sent = time.perf_counter(), sum(r["bytes_up"] + r["bytes_down"] for r in record["rounds"])
    try:
        for row in MODES[fl.mode](b.fed):
            r = dataclasses.asdict(row)
            r.update(r.pop("extra"))
            for k in getattr(exp.task, "metrics", ()):  # the same columns every round, evaluated or not
                r.setdefault(k, None)
            record["rounds"].append(r)
            if keep:  # first the checkpoint (it holds the rows too), then results.json
                checkpoint.save(out, {**b.fed.progress, "rows": record["rounds"], "config": record["config"]})
            sent += row.bytes_up + row.bytes_down
            (log or (lambda line: None))(round_line(row, fl, sent))
            for hook in b.fed.hooks:
                record.update(hook.describe())
            write_json(out / "results.json", _finite(record))
            write_csv(out / "rounds.csv", record["rounds"])
            for hook in b.fed.hooks:
                hook.written(out, r)
        last = [r for r in record["rounds"] if r["loss"] is not None][-1]  # the last evaluated round
        if last.get("client_accuracy") is not None:
            final.update(client_accuracy=last["client_accuracy"], client_accuracy_std=last["client_accuracy_std"])
        final.update({k: last.get(k) for k in getattr(exp.task, "metrics", ())})  # the task's own (instruct)
        final.update(accuracy=last["accuracy"], loss=last["loss"], personal_accuracy=last.get("personal_accuracy"),
                     bytes_total=sent,
                     bytes_up=sum(r["bytes_up"] for r in record["rounds"]),
                     bytes_down=sum(r["bytes_down"] for r in record["rounds"]),
                     seconds=time.perf_counter() - started)
        if record["rounds"][-1]["epsilon"] is not None:
            final["epsilon"] = record["rounds"][-1]["epsilon"]
        record["final"] = final
        meta = {"model": config.model.name, "model_source": exp.model_source, "classes": exp.classes,
                "pooling": config.model.pooling, "image_size": config.data.image_size, **exp.export_meta}
        record["exported"] = exp.method.export(exp.server_model(), out, meta)
        name = f"method.name={config.method.name}"
        plots.curves(out / "curves.png", {name: [record]}, plots.colours([name]),
                     f"{config.model.name} on {config.data.name}, method {config.method.name}, {fl.mode}",
                    getattr(exp.task, "headline", "accuracy"))
        for hook in b.fed.hooks:  # each feature's own files, and its entries of "final"
            final.update(hook.finish(out, record["rounds"]) or {})
        record["status"] = "completed"
        (out / checkpoint.NAME).unlink(missing_ok=True)  # nothing left to resume
    except BaseException as e:
        record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}"
        raise
    finally:
        bar.close()
        write_json(out / "results.json", _finite(record))
    return Result(record["config"], record["rounds"], final, out)


def _machine() -> dict:
    """Where and when this run (or its last resume) ran: every figure in results.json names its processor."""
    import torch

    from fedft.fl.precision import cpu_name

    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "started": datetime.now().astimezone().isoformat(timespec="seconds")}


def _precision_record(prec, remote) -> dict:
    if remote is None:
        return prec.to_dict()
    return {**prec.to_dict(), "clients": "each node resolves fl.precision on its own machine"}


def start_line(config: Config, num_clients: int, prec, data_report: dict | None = None) -> str:
    """The line a run prints once its checks have passed (the engine and Flower's simulation alike)."""
    fl = config.fl
    rows = ""
    if data_report:  # a file source: what it read, used and dropped
        dropped = data_report.get("dropped") or {}
        why = f" ({', '.join(f'{n} {k}' for k, n in dropped.items())} dropped)" if dropped else ""
        rows = f" ({data_report['rows_read']} rows read, {data_report['rows_used']} used{why})"
    return (f"fedft: {fl.mode} {config.method.name} on {config.model.name} / {config.data.name}{rows}, {num_clients} "
            f"clients, {fl.rounds} rounds, {prec.used} ({prec.why})")


def round_line(row, fl, sent: int) -> str:
    """The line printed after each round."""
    test = "" if row.accuracy is None else f"  test accuracy {row.accuracy:.4f}"
    if row.loss is not None:
        test += f"  test loss {row.loss:.4f}"
        test += "".join(f"  {k} {v:.4g}" for k, v in row.extra.items()  # a task's own metrics (instruct: rougeL)
                        if isinstance(v, float))
    came = row.returned + len(row.rejected or [])  # row.returned: the updates aggregated
    if came < row.sampled and fl.mode == "federated":
        test += f"  returned {came}/{row.sampled}"
    if row.rejected:  # which updates the server refused, and the first reason
        first = row.rejected[0]
        test += f"  rejected {len(row.rejected)} (client {first['client']}: {first['why']})"
    if not row.aggregated and fl.mode == "federated":
        test += f"  ({row.returned} < fl.min_clients: model kept)"
    if row.epsilon is not None:
        test += f"  epsilon {row.epsilon:.3g}"
    return f"round {row.round:>3}/{fl.rounds}  train loss {row.train_loss:.4f}{test}  sent {sent / 1e6:.2f} MB  " \
           f"{row.seconds:.1f} s"


def _check_out_dir(out_dir: str | Path | None) -> Path:
    out = Path(out_dir) if out_dir is not None else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder")
    if (out / "results.json").exists():
        raise UsageError(f"--out {str(out)!r} already holds a run (results.json); choose another folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {str(out)!r}: cannot create a folder under {str(parent)!r} "
                         f"(not a writable folder)")
    return out


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="client", leave=False, dynamic_ncols=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _finite(record: dict) -> dict:
    """JSON has no NaN: a loss of a client with no data becomes null."""
    def fix(v):
        if isinstance(v, float) and not np.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(record)
