"""`fedft.run(config) -> Result`: everything the CLI does, callable from Python."""
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
import torch
from torch import nn

from fedft.config import Config
from fedft.data import load_dataset, tokenize
from fedft.data.partition import partition
from fedft.errors import UsageError
from fedft.fl import comm
from fedft.fl.client import client_seed
from fedft.fl.loop import MODES, Setup
from fedft.fl.strategies import STRATEGIES
from fedft.fl.validate import malicious_clients
from fedft.methods import METHODS, Method, trainable_parameters
from fedft.methods.base import count_parameters, freeze_unused
from fedft.models import Backbone, Classifier, load_backbone
from fedft.report import plot_curves, plot_selection, write_csv, write_json


@dataclass
class Experiment:
    """A prepared run: the one shared model (method applied), the data split over clients."""
    config: Config
    model: nn.Module
    method: Method
    params: dict[str, nn.Parameter]
    train: object
    test: object
    classes: list[str]
    clients: list[np.ndarray]
    model_source: str
    proxy: object = None  # fedft.proxy.ProxyRun when clients train a sub-model (proxy.kind = fedpft | fedot)
    selector: object = None  # fedft.methods.layers.LayerSelector under method layers

    @property
    def lr(self) -> float:
        return self.config.fl.lr or self.method.default_lr


@dataclass
class Result:
    config: dict
    rounds: list[dict]
    final: dict
    out_dir: Path | None


def build_model(config: Config, classes: list[str], backbone: Backbone | None = None
                ) -> tuple[nn.Module, Method, Backbone]:
    """Backbone (loaded from model.name unless given) + head with the method applied. Seeded, so the same config
    gives the same initial model."""
    method = METHODS.get(config.method.name, "method.name")(config.method)
    backbone = backbone or load_backbone(config.model)
    classifier = Classifier(backbone.model, len(classes), config.model.pooling, seed=config.fl.seed)
    if classifier.pooling == "pooler" and not (hasattr(backbone.model, "feature_dim")
                                               or getattr(backbone.model, "pooler", None) is not None
                                               or backbone.model_type == "dinov2"):
        raise UsageError(f"model.pooling = 'pooler': model {config.model.name!r} has no pooler; use mean or cls")
    if config.method.head_init == "text":
        if backbone.clip is None or backbone.tokenizer is None:
            raise UsageError(f"method.head_init = 'text' needs a CLIP model with its tokenizer; "
                             f"model.name = {config.model.name!r} is a {backbone.model_type!r} model")
        if classifier.pooling != "pooler":
            raise UsageError(f"method.head_init = 'text' needs model.pooling = 'auto' or 'pooler' (CLIP's "
                             f"projected image embedding), not {config.model.pooling!r}")
        from fedft.models.clip import text_head_weights

        with torch.no_grad():
            classifier.head.weight.copy_(text_head_weights(backbone.clip, backbone.tokenizer, classes))
            classifier.head.bias.zero_()
    torch.manual_seed(config.fl.seed)
    return method.apply(classifier), method, backbone


def to_examples(raw, backbone: Backbone, config: Config):
    """Raw split -> what the model eats: token ids (text) or resized, normalised pixel batches (images)."""
    from fedft.data import IMAGE_SETS, TEXT_SETS, LabelledText
    from fedft.data.images import to_examples as image_examples

    kind = "text" if isinstance(raw, LabelledText) else "image"
    if kind != backbone.modality:
        sets = TEXT_SETS if backbone.modality == "text" else IMAGE_SETS
        article = {"text": "a text", "image": "an image"}
        raise UsageError(f"data.name = {config.data.name!r} is {article[kind]} data set but model.name = "
                         f"{config.model.name!r} is {article[backbone.modality]} model; use {' or '.join(sets)}")
    if kind == "text":
        prompt = config.method.prompt_length if config.method.name == "prompt" else 0
        limit = getattr(backbone.model.config, "max_position_embeddings", None)
        if limit is not None and config.model.max_length + prompt > limit:
            added = f" + method.prompt_length = {prompt}" if prompt else ""
            raise UsageError(f"model.max_length = {config.model.max_length}{added}: model {config.model.name!r} "
                             f"takes at most {limit} positions")
        return tokenize(raw, backbone.tokenizer, config.model.max_length)
    size, patch = config.data.image_size, backbone.patch_size
    if size % patch or size < patch:
        raise UsageError(f"data.image_size = {size}: model {config.model.name!r} takes a multiple of its patch "
                         f"size {patch} (e.g. {patch * max(1, round(size / patch))})")
    return image_examples(raw, size, backbone.image_mean, backbone.image_std, backbone.num_channels)


def check_names(config: Config) -> None:
    """The cheap checks of names that live in registries or on disk (a sweep checks every cell this way first)."""
    from fedft.data import IMAGE_SETS, TEXT_SETS
    from fedft.models import BUILTIN

    STRATEGIES.get(config.fl.strategy, "fl.strategy")
    METHODS.get(config.method.name, "method.name")
    name = config.data.name
    if name not in TEXT_SETS + IMAGE_SETS and not name.startswith(("csv:", "imagefolder:")):
        raise UsageError(f"data.name = {name!r}: unknown data set; choose one of {', '.join(TEXT_SETS + IMAGE_SETS)}")
    model = config.model.name
    if model not in BUILTIN and not Path(model).is_dir() and os.environ.get("HF_HUB_OFFLINE") != "0":
        raise UsageError(f"model.name = {model!r}: not a built-in model ({', '.join(BUILTIN)}) "
                         f"nor a local Hugging Face model directory")


def prepare(config: Config, log: Callable[[str], None] | None = None) -> Experiment:
    """Load and check everything a run needs. All bad input fails here, before anything is written."""
    check_names(config)
    train_raw, test_raw = load_dataset(config.data)
    clients = partition(train_raw.labels, config.data, config.fl.seed)
    device = resolve_device(config.fl.device)
    if config.proxy.kind != "none":
        return _prepare_proxy(config, train_raw, test_raw, clients, device, log)
    model, method, backbone = build_model(config, train_raw.classes)
    train = to_examples(train_raw, backbone, config)
    test = to_examples(test_raw, backbone, config)
    freeze_unused(model, test.batch([0, len(test) - 1])[0])
    model.to(device)
    selector = None
    if config.method.name == "layers":
        from fedft.methods.layers import LayerSelector

        selector = LayerSelector(config.method, model, len(clients), config.fl.seed)
    return Experiment(config, model, method, trainable_parameters(model), train.to(device), test.to(device),
                      train_raw.classes, clients, backbone.source, selector=selector)


def _prepare_proxy(config: Config, train_raw, test_raw, clients, device, log) -> Experiment:
    """Clients train a sub-model of the full one: build (or load) it, apply the method to both, map each trained
    parameter of the sub-model onto the full model (refusing a method where that cannot be done), and only then
    align the sub-model by distillation."""
    from fedft.models.arch import layer_list_name
    from fedft.proxy import ProxyRun, align_layers, make_sub_backbone, param_map

    from fedft.proxy.build import is_proxy_dir

    if is_proxy_dir(config.model.name):
        raise UsageError(f"model.name = {config.model.name!r} is already a sub-model; with proxy.kind, model.name is "
                         f"the full model and proxy.path the sub-model folder")
    backbone = load_backbone(config.model)
    train = to_examples(train_raw, backbone, config).to(device)  # checks modality and sizes first
    test = to_examples(test_raw, backbone, config).to(device)
    backbone.model.to(device)
    sub, info, data = make_sub_backbone(config.proxy, backbone, config.model.max_length, config.data.image_size)
    layer_list = layer_list_name(backbone.model)
    full, method, _ = build_model(config, train_raw.classes, backbone)
    model, _, _ = build_model(config, train_raw.classes, dataclasses.replace(backbone, model=sub))
    for m in (full, model):
        m.to(device)
        freeze_unused(m, test.batch([0, len(test) - 1])[0])
    params, full_params = trainable_parameters(model), trainable_parameters(full)
    mapping = param_map(params, full_params, info, layer_list, config.proxy.kind, config.method.name)
    align_layers(config.proxy, backbone.model, sub, info, data, config.fl.seed, log)  # the method's modules start
    proxy = ProxyRun(config.proxy, info, full, full_params, mapping, backbone.model, sub, test, data,  # as identity
                     config.fl.seed, config.comm.dtype)
    return Experiment(config, model, method, params, train, test, train_raw.classes, clients, backbone.source, proxy)


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
        raise UsageError(f"--resume {str(folder)!r}: no {checkpoint.NAME} (the run stopped before its first round "
                         f"ended); start it again")
    return config


def run(config: Config, out_dir: str | Path | None = None, progress: bool = False,
        log: Callable[[str], None] | None = None, remote=None, resume: bool = False) -> Result:
    """Run the experiment; write results.json, rounds.csv, curves.png and the trained parameters to out_dir
    (default runs/<timestamp>). results.json is rewritten after every round, so an interrupted run keeps
    its finished rounds. `remote(experiment)`, where given, makes the function that trains the sampled clients
    elsewhere (fedft.deploy: on Flower SuperNodes); everything else runs here as in a simulation."""
    from fedft.fl import checkpoint

    out = Path(out_dir) if resume else _check_out_dir(out_dir)
    if config.fl.backend == "flower-sim" and remote is None:  # Flower's runtime calls this function in its ServerApp
        from fedft.deploy.simulation import simulate

        simulate(config, out, log, resume)
        record = json.loads((out / "results.json").read_text())
        return Result(record["config"], record["rounds"], record["final"], out)
    ckpt = checkpoint.load(out) if resume else None
    exp = prepare(config, log)
    dp = client_dp(config)  # calibrating the noise may fail: before anything is written
    sample_dp = sample_level_dp(config, exp)
    out.mkdir(parents=True, exist_ok=True)
    strategy = STRATEGIES.get(config.fl.strategy, "fl.strategy")(config.fl)
    fl = config.fl
    steps = fl.rounds * (len(exp.clients) if fl.mode == "local" else 1 if fl.mode == "central"
                         else fl.clients_per_round)
    bar = _progress_bar(steps, progress)
    train, test, cache = _feature_cache(exp, log)
    setup = Setup(exp.model, exp.params, train, test, exp.clients, fl, exp.lr, config.comm.dtype,
                  strategy, tick=bar.update, parallel_clients=parallel_clients(fl, exp.model),
                  precision=precision(fl, exp.model, sample_dp is not None), dp=dp, sample_dp=sample_dp,
                  proxy=exp.proxy, selector=exp.selector, remote=remote(exp) if remote else None,
                  malicious=malicious_clients(len(exp.clients), fl.malicious_fraction, fl.seed), resume=ckpt)
    trainable = sum(p.numel() for p in exp.params.values())
    payload = len(comm.encode({k: p.detach() for k, p in exp.params.items()}, config.comm.dtype))
    record = {
        "config": config.to_dict(), "status": "running", "lr": exp.lr, "model_source": exp.model_source,
        "classes": exp.classes, "num_train": len(exp.train), "num_test": len(exp.test),
        "client_sizes": [len(c) for c in exp.clients], "feature_cache": cache, "rounds": [], "final": None,
        "dp": dp.describe(fl.rounds) if dp is not None else sample_dp.describe() if sample_dp is not None else None,
    }
    if exp.selector is not None:
        record["layers"] = {"num_layers": exp.selector.num_layers, "budgets": exp.selector.budget.tolist()}
    final = {"trainable_params": trainable, "total_params": count_parameters(exp.model),
             "payload_bytes": payload}
    if exp.proxy is not None:
        record["proxy"] = _proxy_record(exp)
        final["full_model_params"] = count_parameters(exp.proxy.full)
    keep = resumable(config) is None  # write a checkpoint after every round
    if ckpt is not None:
        record["rounds"] = ckpt["rows"]
        if log:
            log(f"resuming after round {ckpt['round']} of {fl.rounds}")
    started, sent = time.perf_counter(), sum(r["bytes_up"] + r["bytes_down"] for r in record["rounds"])
    try:
        for row in MODES[fl.mode](setup):
            r = dataclasses.asdict(row)
            record["rounds"].append(r)
            if keep:  # first the checkpoint (it holds the rows too), then results.json
                checkpoint.save(out, {**setup.progress, "rows": record["rounds"]})
            sent += row.bytes_up + row.bytes_down
            test = "" if row.accuracy is None else f"  test accuracy {row.accuracy:.4f}  test loss {row.loss:.4f}"
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
            (log or (lambda line: None))(f"round {row.round:>3}/{fl.rounds}  train loss {row.train_loss:.4f}{test}"
                                         f"  sent {sent / 1e6:.2f} MB  {row.seconds:.1f} s")
            if exp.proxy is not None:
                record["proxy"]["alignments"] = exp.proxy.alignments
            write_json(out / "results.json", _finite(record))
            write_csv(out / "rounds.csv", record["rounds"])
        last = [r for r in record["rounds"] if r["accuracy"] is not None][-1]
        final.update(accuracy=last["accuracy"], loss=last["loss"], bytes_total=sent,
                     bytes_up=sum(r["bytes_up"] for r in record["rounds"]),
                     bytes_down=sum(r["bytes_down"] for r in record["rounds"]),
                     seconds=time.perf_counter() - started)
        if dp is not None or sample_dp is not None:
            final["epsilon"] = record["rounds"][-1]["epsilon"]
        if exp.proxy is not None:
            final["proxy_accuracy"] = last["proxy_accuracy"]
        record["final"] = final
        meta = {"model": config.model.name, "model_source": exp.model_source, "classes": exp.classes,
                "pooling": config.model.pooling, "image_size": config.data.image_size}
        if exp.proxy is not None:  # what the server keeps: the trained parameters plugged into the full model
            exp.proxy.plug(exp.params)
            meta["proxy"] = config.proxy.kind
        record["exported"] = exp.method.export(exp.proxy.full if exp.proxy is not None else exp.model, out, meta)
        plot_curves(out / "curves.png", record["rounds"], f"{config.method.name} / {fl.mode}")
        if exp.selector is not None:
            plot_selection(out / "selection.png", record["rounds"], exp.selector.num_layers,
                           f"layers ({config.method.select}): clients per layer and round")
        record["status"] = "completed"
        (out / checkpoint.NAME).unlink(missing_ok=True)  # nothing left to resume
    except BaseException as e:
        record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}"
        raise
    finally:
        bar.close()
        write_json(out / "results.json", _finite(record))
    return Result(record["config"], record["rounds"], final, out)


def _proxy_record(exp: Experiment) -> dict:
    """What results.json says about the sub-model: where it came from, its size, its alignment."""
    info = exp.proxy.info
    return {"kind": info.kind, "layer_map": info.layer_map, "compressed_layers": sorted(info.neurons),
            "ffn_neurons": len(next(iter(info.neurons.values()))) if info.neurons else info.ffn_width,
            "ffn_width": info.ffn_width, "full_layer_params": info.full_params, "sub_layer_params": info.sub_params,
            "client_model_params": count_parameters(exp.model), "full_model_params": count_parameters(exp.proxy.full),
            "distill": info.distill, "alignments": []}


def _feature_cache(exp: Experiment, log) -> tuple[object, object, dict | None]:
    """(train, test) as cached frozen features where only the head trains and the cache fits fl.cache_mb;
    and what results.json says about it."""
    from fedft.fl.cache import FeatureCache, cacheable, feature_bytes

    fl = exp.config.fl
    if not (fl.feature_cache and cacheable(exp.model)) or exp.proxy is not None:
        return exp.train, exp.test, None
    need = feature_bytes(exp.model, len(exp.train) + len(exp.test))
    if need > fl.cache_mb * 2 ** 20:
        (log or (lambda line: None))(f"feature cache off: {need / 2 ** 20:.0f} MiB > fl.cache_mb = {fl.cache_mb}")
        return exp.train, exp.test, {"enabled": False, "bytes": need}
    return FeatureCache(exp.model, exp.train), FeatureCache(exp.model, exp.test), {"enabled": True, "bytes": need}


NOISE_STREAM = 10 ** 6 + 6  # a tag no round number reaches: (seed, tag) never equals a client's (seed, round, 0)


def client_dp(config: Config):
    """The server's DP-FedAvg for dp.mode = client (noise calibrated to dp.target_epsilon if set), else None."""
    from fedft.fl.privacy import ClientDP, calibrate

    if config.dp.mode != "client":
        return None
    fl = config.fl
    rate = fl.clients_per_round / config.data.num_clients
    z = calibrate(config.dp.target_epsilon, config.dp.delta, rate, fl.rounds) if config.dp.target_epsilon \
        else config.dp.noise_multiplier
    return ClientDP(config.dp, fl.clients_per_round, rate, z, client_seed(fl.seed, NOISE_STREAM))


def sample_level_dp(config: Config, exp: Experiment):
    """DP-SGD inside clients for dp.mode = sample, else None. The noise for dp.target_epsilon is calibrated for
    the smallest client taking part in every round (the most any client can spend)."""
    from fedft.fl.availability import local_steps
    from fedft.fl.privacy import SampleDP, calibrate, check_per_sample_gradients

    if config.dp.mode != "sample":
        return None
    fl = config.fl
    z = config.dp.noise_multiplier
    if config.dp.target_epsilon:
        smallest = min(len(c) for c in exp.clients if len(c))
        z = calibrate(config.dp.target_epsilon, config.dp.delta, min(1.0, fl.batch_size / smallest),
                      fl.rounds * local_steps(smallest, fl), unit="local steps of the smallest client")
    dp = SampleDP(config.dp, exp.model, z)
    check_per_sample_gradients(dp, exp.params, *exp.train.batch(np.arange(min(2, len(exp.train)))))
    return dp


def resolve_device(name: str) -> torch.device:
    """fl.device -> a device that exists here (auto: the first CUDA GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise UsageError(f"fl.device = {name!r}: this machine has {have}; use auto or cpu")
    return device


def precision(fl, model: nn.Module, sample_dp: bool = False) -> str:
    """fl.precision with auto resolved: bf16 autocast on a GPU; fp32 on a CPU (bf16 was measured slower there)
    and under sample-level DP (Opacus' per-sample gradients want one dtype)."""
    if fl.precision != "auto":
        return fl.precision
    if sample_dp:
        return "fp32"
    return "fp32" if next(model.parameters()).device.type == "cpu" else "bf16"


def parallel_clients(fl, model: nn.Module) -> int:
    """fl.parallel_clients, with 0 (auto) resolved: on a CPU batching clients gains nothing (the model is
    compute-bound at a client's batch already; measured in benchmarks/engine.py), so 1; elsewhere every
    sampled client at once."""
    if fl.parallel_clients:
        return fl.parallel_clients
    on_cpu = next(model.parameters()).device.type == "cpu"
    return 1 if on_cpu else fl.clients_per_round


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
