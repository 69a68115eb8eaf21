"""Building an experiment from a config: the data and its split over clients, the backbone with the task's head
and the method applied, on the device. All bad input fails here, before anything is written."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fedft.config import Config
from fedft.data import load_data, tokenize
from fedft.data.partition import hold_out, partition
from fedft.errors import UsageError
from fedft.fl.precision import Precision, resolve
from fedft.fl.strategies import STRATEGIES
from fedft.methods import METHODS, Method, trainable_parameters
from fedft.methods.base import freeze_unused
from fedft.models import Backbone, load_backbone
from fedft.tasks.base import task_for
from fedft.tasks.classify import CLASSIFY

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
    task: object = CLASSIFY
    precision: Precision = Precision("fp32", "fl.precision = fp32")  # fl.precision resolved on this machine
    export_meta: dict = field(default_factory=dict)  # added to what the export records (proxy: its kind)
    data_report: dict = field(default_factory=dict)  # a file source's rows read, used and dropped (and why)
    client_tests: list[np.ndarray] | None = None  # data.client_test_fraction: each client's own held-out rows

    @property
    def lr(self) -> float:
        return self.config.fl.lr or self.method.default_lr

    def server_model(self) -> nn.Module:
        """The model whose trained parameters the server keeps (a proxy run: the full model, plugged in)."""
        if self.proxy is not None:
            self.proxy.plug(self.params)
            return self.proxy.full
        return self.model


def build_model(config: Config, classes: list[str], backbone: Backbone | None = None, task=CLASSIFY
                ) -> tuple[nn.Module, Method, Backbone]:
    """Backbone (loaded from model.name unless given) + what the task puts on it, with the method applied. Seeded,
    so the same config gives the same initial model."""
    method = METHODS.get(config.method.name, "method.name")(config.method)
    backbone = backbone or load_backbone(config.model, causal=getattr(task, "causal", False))
    task.check(config, backbone)
    model = task.build(config, backbone, classes)
    torch.manual_seed(config.fl.seed)
    return method.apply(model), method, backbone


def to_examples(raw, backbone: Backbone, config: Config):
    """Raw split -> what the model eats: token ids (text) or resized, normalised pixel batches (images)."""
    from fedft.data import LabelledText, sources_of
    from fedft.data.images import to_examples as image_examples

    kind = "text" if isinstance(raw, LabelledText) else "image"
    if kind != backbone.modality:
        sets = sources_of(backbone.modality)
        article = {"text": "a text", "image": "an image"}
        raise UsageError(f"data.name = {config.data.name!r} is {article[kind]} data set but model.name = "
                         f"{config.model.name!r} is {article[backbone.modality]} model; use {sets}")
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
    from fedft.data.sources import find
    from fedft.models import BUILTIN

    STRATEGIES.get(config.fl.strategy, "fl.strategy")
    METHODS.get(config.method.name, "method.name")
    find(config.data.name)
    model = config.model.name
    if model not in BUILTIN and not Path(model).is_dir() and os.environ.get("HF_HUB_OFFLINE") != "0":
        raise UsageError(f"model.name = {model!r}: not a built-in model ({', '.join(BUILTIN)}) "
                         f"nor a local Hugging Face model directory")


def prepare(config: Config, log: Callable[[str], None] | None = None) -> Experiment:
    """Load and check everything a run needs. All bad input fails here, before anything is written."""
    check_names(config)
    data = load_data(config.data)
    train_raw, test_raw = data.train, data.test
    clients = partition(train_raw.labels, config.data, config.fl.seed, data.groups, data.group_names)
    client_tests = None
    if config.data.client_test_fraction:
        clients, client_tests = hold_out(clients, config.data.client_test_fraction, config.fl.seed)
    if config.fl.clients_per_round > len(clients):  # natural clients: known only now
        raise UsageError(f"fl.clients_per_round = {config.fl.clients_per_round}: the data names only {len(clients)} "
                         f"clients (data.client_column = {config.data.client_column!r})")
    device = resolve_device(config.fl.device)
    if config.proxy.kind != "none":
        exp = _prepare_proxy(config, train_raw, test_raw, clients, device, log)
    else:
        task = task_for(config, train_raw)
        model, method, backbone = build_model(config, train_raw.classes, task=task)
        train = task.examples(train_raw, backbone, config)
        test = task.examples(test_raw, backbone, config)
        freeze_unused(model, test.batch([0, len(test) - 1])[0])
        model.to(device)
        exp = Experiment(config, model, method, trainable_parameters(model), train.to(device), test.to(device),
                         train_raw.classes, clients, backbone.source, task=task,
                         precision=resolve(config.fl.precision, device, method.keep_fp32))
    exp.data_report, exp.client_tests = data.report, client_tests
    return exp


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
    sub, info, data = make_sub_backbone(config.proxy, backbone, config.model.max_length, config.data.image_size,
                                        held=(train_raw, test_raw))  # the server never distils on them
    layer_list = layer_list_name(backbone.model)
    full, method, _ = build_model(config, train_raw.classes, backbone)
    model, _, _ = build_model(config, train_raw.classes, dataclasses.replace(backbone, model=sub))
    for m in (full, model):
        m.to(device)
        freeze_unused(m, test.batch([0, len(test) - 1])[0])
    params, full_params = trainable_parameters(model), trainable_parameters(full)
    mapping = param_map(params, full_params, info, layer_list, config.proxy.kind, config.method.name)
    precision = resolve(config.fl.precision, device, method.keep_fp32)
    align_layers(config.proxy, backbone.model, sub, info, data, config.fl.seed, log,  # the method's modules start
                 precision.used)  # as identity
    proxy = ProxyRun(config.proxy, info, full, full_params, mapping, backbone.model, sub, test, data,
                     config.fl.seed, config.comm.dtype)
    return Experiment(config, model, method, params, train, test, train_raw.classes, clients, backbone.source, proxy,
                      precision=precision, export_meta={"proxy": config.proxy.kind})


def resolve_device(name: str) -> torch.device:
    """fl.device -> a device that exists here (auto: the first CUDA GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA device"
        raise UsageError(f"fl.device = {name!r}: this machine has {have}; use auto or cpu")
    return device

