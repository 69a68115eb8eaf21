"""Typed experiment configuration: one dataclass per TOML section, each field documented once.

Values are checked when the config is built (`Config.from_dict`), so a bad value fails at the edge with
one line that names the key, the value and what is allowed. Names that live in a registry (method,
strategy, data set, model) are checked where they are looked up, before anything is written.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedft.errors import UsageError


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field whose help text lives in its metadata (shown by `fedft run --help-config`)."""
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    name: str = doc("built-in model (minilm, dinov2-small, tiny-bert, tiny-vit, tiny-dinov2, tiny-clip) or a local "
                    "Hugging Face model directory", default="minilm")
    pooling: str = doc("how token states become one vector: auto (CLIP: pooler, others: mean) | mean | cls | pooler",
                       default="auto")
    max_length: int = doc("longest token sequence kept (longer inputs are truncated)", default=48)

    def check(self) -> None:
        _choice("model.pooling", self.pooling, ("auto", "mean", "cls", "pooler"))
        _at_least("model.max_length", self.max_length, 4)


@dataclass
class DataConfig:
    name: str = doc("data set: wordnet-nouns | fashion-mnist | digits | imagefolder:PATH (one sub-folder per class) | "
                    "a file: csv:PATH | tsv:PATH | jsonl:PATH | parquet:PATH | hf:DIR (a datasets save_to_disk "
                    "folder), with the columns data.text_column or data.image_column, and data.label_column",
                    default="wordnet-nouns")
    text_column: str = doc("file sources: the column holding the text", default="text")
    image_column: str = doc("file sources: the column holding images (encoded bytes, or paths relative to the file)",
                            default="image")
    label_column: str = doc("file sources: the column holding the label (text or integers)", default="label")
    prompt_column: str = doc("file sources, instructions: the column holding each prompt", default="instruction")
    response_column: str = doc("file sources, instructions: the column holding each response", default="response")
    messages_column: str = doc("file sources, instructions: a column of chats (lists of {role, content}), used "
                               "instead of the prompt and response columns when the file has it",
                               default="messages")
    client_column: str = doc("file sources, partition natural: the column naming each row's client (a site, a user)",
                             default="client")
    label_case: str = doc("file sources: keep | fold (labels that differ only in case become one class)",
                          default="keep")
    test: str = doc("file sources: a given test set (csv:PATH, ... or a path whose suffix names the format; the "
                    "same columns); empty = hold out data.test_fraction of each class", default="")
    num_clients: int = doc("number of clients the training set is split over (natural: every client found, unless "
                           "set to fewer, which samples that many with fl.seed)", default=50)
    partition: str = doc("how the training set is split: iid | dirichlet | pathological | natural (one client per "
                         "value of data.client_column)", default="dirichlet")
    alpha: float = doc("Dirichlet concentration over labels (smaller = more skewed)", default=0.5)
    classes_per_client: int = doc("labels each client holds under the pathological partition", default=2)
    min_partition_size: int = doc("dirichlet: every client gets at least this many examples (lower it when a "
                                  "small alpha over many clients cannot be split)", default=10)
    shots: int = doc("few-shot: at most this many examples per class per client (0 = all)", default=0)
    image_size: int = doc("images: side in pixels the model sees (a multiple of its patch size)", default=56)
    min_class_size: int = doc("wordnet-nouns: keep categories with at least this many glosses", default=1500)
    train_per_class: int = doc("wordnet-nouns, fashion-mnist, digits: at most this many training examples per class",
                               default=1000)
    test_per_class: int = doc("wordnet-nouns, fashion-mnist, digits: test examples per class (a fixed, seeded split)",
                              default=300)
    test_fraction: float = doc("file sources, imagefolder: share of each class held out for the test set",
                               default=0.2)
    client_test_fraction: float = doc("share of each client's own rows held out of its training and scored client "
                                      "by client (client_accuracy: mean and std over clients); 0 = none", default=0.0)

    def check(self) -> None:
        _at_least("data.num_clients", self.num_clients, 0 if self.partition == "natural" else 1)
        _choice("data.partition", self.partition, ("iid", "dirichlet", "pathological", "natural"))
        _choice("data.label_case", self.label_case, ("keep", "fold"))
        if not self.alpha > 0:
            raise UsageError(f"data.alpha = {self.alpha}: must be > 0")
        _at_least("data.classes_per_client", self.classes_per_client, 1)
        _at_least("data.shots", self.shots, 0)
        _at_least("data.min_partition_size", self.min_partition_size, 0)
        _at_least("data.min_class_size", self.min_class_size, 2)
        _at_least("data.image_size", self.image_size, 1)
        _at_least("data.train_per_class", self.train_per_class, 1)
        _at_least("data.test_per_class", self.test_per_class, 1)
        if not 0 <= self.client_test_fraction < 1:
            raise UsageError(f"data.client_test_fraction = {self.client_test_fraction}: must be in [0, 1)")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"data.test_fraction = {self.test_fraction}: must be between 0 and 1 (exclusive)")


@dataclass
class MethodConfig:
    name: str = doc("tuning method: full | head | bias | lora | dora | lora_sb (Fed-SB: fixed B and A, an r x r "
                    "matrix trained between them) | adapter | prompt | layers (selective layers)", default="lora")
    rank: int = doc("lora, lora_sb: rank r of the low-rank update", default=8)
    sb_init_batches: int = doc("lora_sb: batches of each initialising client's data its update approximation (the "
                               "gradient B and A come from) is taken over", default=4)
    rank_min: int = doc("lora, heterogeneous ranks: each client's rank drawn once (seeded) from rank_min..rank_max",
                        default=1)
    rank_max: int = doc("lora: upper end of the heterogeneous ranks (0 = every client has method.rank); the global "
                        "LoRA has this rank and alpha / rank_max its scaling", default=0)
    alpha: float = doc("lora: scaling alpha (update scaled by alpha / rank)", default=16.0)
    dropout: float = doc("lora: dropout on the LoRA input", default=0.0)
    targets: list[str] = doc("lora: module names to adapt ([] = the architecture's attention query/value)",
                             default_factory=list)
    bottleneck: int = doc("adapter: bottleneck width of each Houlsby adapter", default=32)
    prompt_length: int = doc("prompt: number of learned prompt tokens", default=10)
    deep: bool = doc("prompt: fresh prompt tokens at every layer (deep) instead of the input only (shallow)",
                     default=False)
    head_init: str = doc("classifier start: random | text (CLIP only: the class names' normalised text embeddings)",
                         default="random")
    variant: str = doc("lora: how the server aggregates LoRA: fedavg (average A and B) | fedex (FedEx-LoRA: also "
                       "fold the residual mean(BA) - mean(B)mean(A) into the frozen weights, exact) | rolora (RoLoRA: "
                       "rounds alternate between training and sending B and A) | fedsa (FedSA-LoRA: clients share A and keep "
                       "their own B) | flora (FLoRA: stack the clients' factors, merge their product into the frozen weights, "
                       "a fresh LoRA each round) | flexlora (FlexLoRA: the weighted mean of the clients' products, each client "
                       "given its truncated SVD at its own rank) | hetlora (HetLoRA: zero-padded ranks averaged by the "
                       "norm of each client's update, with rank self-pruning)", default="fedavg")
    prune_lambda: float = doc("lora, hetlora: weight of the rank self-pruning penalty lambda * ||B_tail A_tail||_F on "
                              "each client's last components (0 = no pruning)", default=0.01)
    prune_gamma: float = doc("lora, hetlora: a client that prunes keeps floor(gamma * rank) components (at least "
                             "one fewer)", default=0.9)
    ffa: bool = doc("lora: FFA-LoRA, train only B and keep A frozen at its random init (holds up better under DP)",
                    default=False)
    inner: str = doc("layers: what a selected layer trains: full (all its parameters) | bias | lora", default="full")
    budget: int = doc("layers: layers each client trains (when budget_max = 0)", default=2)
    budget_min: int = doc("layers: heterogeneous budgets, each client's drawn once (seeded) from budget_min..budget_max",
                          default=1)
    budget_max: int = doc("layers: upper end of the heterogeneous budgets (0 = every client has method.budget)",
                          default=0)
    select: str = doc("layers: which layers: top | bottom | random | gradient (importance from the clients' "
                      "gradients, masks chosen by the server with the consistency term)", default="gradient")
    importance: str = doc("layers, gradient: per-layer score: gn (sum of squared gradient norms) | rgn (gn / "
                          "||parameters||^2) | snr (gradient mean^2 / std over batches)", default="gn")
    balance: float = doc("layers, gradient: lambda, weight of the consistency term (0 = each client's own top "
                         "layers; importances sum to 1 per client and one client joining or leaving a layer moves "
                         "the term by at most lambda: 0.01 barely matters, around 1 all clients agree; results.json "
                         "reports the lambda at which they would, as layers.consensus_lambda)", default=0.0)
    reselect_every: int = doc("layers: a client's layers are chosen again after this many rounds", default=1)

    def check(self) -> None:
        _at_least("method.rank", self.rank, 1)
        _at_least("method.sb_init_batches", self.sb_init_batches, 1)
        if not self.alpha > 0:
            raise UsageError(f"method.alpha = {self.alpha}: must be > 0")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"method.dropout = {self.dropout}: must be in [0, 1)")
        _at_least("method.bottleneck", self.bottleneck, 1)
        _at_least("method.prompt_length", self.prompt_length, 1)
        _choice("method.head_init", self.head_init, ("random", "text"))
        _choice("method.inner", self.inner, ("full", "bias", "lora"))
        _choice("method.select", self.select, ("top", "bottom", "random", "gradient"))
        _choice("method.variant", self.variant, ("fedavg", "fedex", "rolora", "fedsa", "flora", "flexlora", "hetlora"))
        if self.prune_lambda < 0:
            raise UsageError(f"method.prune_lambda = {self.prune_lambda}: must be >= 0")
        if not 0 < self.prune_gamma < 1:
            raise UsageError(f"method.prune_gamma = {self.prune_gamma}: must be between 0 and 1 (exclusive)")
        _at_least("method.rank_min", self.rank_min, 1)
        _at_least("method.rank_max", self.rank_max, 0)
        if self.rank_max and self.rank_max < self.rank_min:
            raise UsageError(f"method.rank_max = {self.rank_max}: must be >= method.rank_min ({self.rank_min})")
        if self.rank_max and self.variant not in ("fedavg", "flexlora", "hetlora"):
            raise UsageError(f"method.rank_max with method.variant = {self.variant!r}: heterogeneous ranks are "
                             f"aggregated by fedavg (zero-padding), hetlora or flexlora")
        _choice("method.importance", self.importance, ("gn", "rgn", "snr"))
        _at_least("method.budget", self.budget, 1)
        _at_least("method.budget_min", self.budget_min, 1)
        _at_least("method.budget_max", self.budget_max, 0)
        if self.budget_max and self.budget_max < self.budget_min:
            raise UsageError(f"method.budget_max = {self.budget_max}: must be >= method.budget_min "
                             f"({self.budget_min}), or 0 for one budget for all")
        if not self.balance >= 0:
            raise UsageError(f"method.balance = {self.balance}: must be >= 0")
        _at_least("method.reselect_every", self.reselect_every, 1)


@dataclass
class FLConfig:
    mode: str = doc("federated | local (each client alone) | central (all client data pooled)",
                    default="federated")
    central_budget: str = doc("central: what each round matches of a federated round: examples (the example-passes "
                              "all sampled clients make: clients_per_round / num_clients of the pooled data, "
                              "local_epochs times) | steps (the optimizer steps one client of mean size makes: "
                              "clients_per_round times fewer examples)", default="examples")
    rounds: int = doc("communication rounds", default=10)
    clients_per_round: int = doc("clients sampled each round", default=10)
    local_epochs: int = doc("passes over its data each sampled client makes per round", default=1)
    batch_size: int = doc("local mini-batch size", default=32)
    group_by_length: bool = doc("batch examples of similar length together (less padding, much faster on text); "
                                "false = uniformly random batches", default=True)
    lr: float = doc("local learning rate; 0 = the method's default (set for AdamW: give one for sgd)", default=0.0)
    weight_decay: float = doc("weight decay on trainable parameters (AdamW: decoupled; sgd: L2 in the gradient)",
                              default=0.0)
    optimizer: str = doc("local optimizer: adamw | sgd (with fl.momentum; SCAFFOLD is defined for SGD steps)",
                         default="adamw")
    momentum: float = doc("sgd: momentum of the local optimizer (0 = plain SGD)", default=0.0)
    strategy: str = doc("server strategy: fedavg | fedprox | fedavgm | fedadam | scaffold | median | trimmed_mean | "
                        "krum (the last three are robust to some malicious clients)", default="fedavg")
    trim_beta: float = doc("trimmed_mean: share of updates dropped at each end, per coordinate", default=0.2)
    krum_byzantine: int = doc("krum: malicious clients assumed per round (scores use the n - f - 2 nearest)",
                              default=1)
    krum_keep: int = doc("krum: updates averaged (1 = Krum, more = Multi-Krum)", default=1)
    max_update_norm: float = doc("the server rejects an update whose L2 norm (against the global state it started "
                                 "from) is above this (0 = no limit); NaN/Inf, unknown keys and wrong shapes are "
                                 "always rejected", default=0.0)
    max_norm_ratio: float = doc("the server rejects an update whose L2 norm is above this many times the median "
                                "norm of the round's updates (far out of line with the others; 0 = no check; "
                                "needs 3 or more updates in the round, most of them honest)", default=0.0)
    malicious_fraction: float = doc("simulation: share of the clients (fixed, seeded) that send a corrupted update "
                                    "(fl.attack)", default=0.0)
    attack: str = doc("what malicious clients send: sign_flip (start - attack_scale * update) | scale (start + "
                      "attack_scale * update) | random (noise of attack_scale x the update's norm)",
                      default="sign_flip")
    attack_scale: float = doc("size of the attack", default=5.0)
    mu: float = doc("fedprox: weight of the proximal term mu/2 * ||w - w_global||^2", default=0.01)
    server_lr: float = doc("fedavgm/fedadam: server learning rate (0 = 1.0 for fedavgm, 0.01 for fedadam)",
                           default=0.0)
    server_momentum: float = doc("fedavgm: server momentum", default=0.9)
    beta1: float = doc("fedadam: first-moment decay", default=0.9)
    beta2: float = doc("fedadam: second-moment decay", default=0.99)
    tau: float = doc("fedadam: adaptivity (epsilon) term", default=1e-3)
    seed: int = doc("seed for client sampling, partitioning, initialisation and local shuffling", default=0)
    eval_every: int = doc("evaluate the global model every this many rounds (and always after the last)",
                          default=2)
    parallel_clients: int = doc("clients trained at once, in lockstep, as one batched computation over the shared "
                                "model (cross-client batching); 1 = one after another; 0 = auto: 1 on a CPU, "
                                "where batching was measured to gain nothing, else all sampled clients",
                                default=0)
    backend: str = doc("engine (fedft's in-process engine) | flower-sim (Flower's simulation runtime: each client a "
                       "Flower ClientApp in a Ray actor; needs pip install 'fedft[flower-sim]')", default="engine")
    device: str = doc("where to train: auto (a CUDA GPU when there is one, else the CPU) | cpu | cuda | cuda:N",
                      default="auto")
    precision: str = doc("auto (bf16 autocast where the device computes bf16 natively, by torch's check: a GPU, or "
                         "a CPU with AVX512-BF16 or AMX whose bf16 matrix products are also measured >= 1.2x faster "
                         "than fp32, once per machine; else fp32, and fp32 for sample-level DP and deep prompts, "
                         "measured less accurate in bf16) | fp32 | "
                         "bf16 (weights and optimizer state stay fp32)",
                         default="auto")
    dropout: float = doc("probability that a sampled client fails to return its update (seeded, per round)",
                         default=0.0)
    stragglers: float = doc("probability that a sampled client is slow this round (fl.straggler_slowdown times "
                            "slower per step)", default=0.0)
    straggler_slowdown: float = doc("how many times longer a straggler takes per local step", default=4.0)
    deadline: float = doc("round deadline in simulated time, counted in local steps of a regular client; updates "
                          "that would arrive later are dropped (0 = no deadline)", default=0.0)
    min_clients: int = doc("a round with fewer returned updates keeps the global model (no aggregation)",
                           default=1)
    feature_cache: bool = doc("where only the head trains (method head), compute the frozen backbone's features "
                              "once and reuse them in later rounds and evaluation", default=True)
    cache_mb: int = doc("largest feature cache (train + test) in MiB; a bigger one is not built", default=4096)
    client_state_mb: float = doc("memory for what methods keep per client between rounds (SCAFFOLD's controls, "
                                 "FedSA's own B, local mode's models); past it the least recently used go to disk "
                                 "(safetensors, a temporary folder); 0 = no cap", default=0.0)

    def check(self) -> None:
        _choice("fl.mode", self.mode, ("federated", "local", "central"))
        _choice("fl.central_budget", self.central_budget, ("examples", "steps"))
        _choice("fl.backend", self.backend, ("engine", "flower-sim"))
        _at_least("fl.rounds", self.rounds, 1)
        _at_least("fl.clients_per_round", self.clients_per_round, 1)
        _at_least("fl.local_epochs", self.local_epochs, 1)
        _at_least("fl.batch_size", self.batch_size, 1)
        _at_least("fl.eval_every", self.eval_every, 1)
        _at_least("fl.seed", self.seed, 0)
        _at_least("fl.parallel_clients", self.parallel_clients, 0)
        _at_least("fl.cache_mb", self.cache_mb, 0)
        _at_least("fl.client_state_mb", self.client_state_mb, 0)
        _choice("fl.precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("fl.optimizer", self.optimizer, ("adamw", "sgd"))
        if not 0 <= self.momentum < 1:
            raise UsageError(f"fl.momentum = {self.momentum}: must be in [0, 1)")
        if self.momentum and self.optimizer != "sgd":
            raise UsageError(f"fl.momentum = {self.momentum} is an sgd setting; fl.optimizer = {self.optimizer!r}")
        if self.strategy == "scaffold" and self.optimizer != "sgd":
            raise UsageError("fl.strategy = 'scaffold' corrects SGD steps (Karimireddy et al.): set fl.optimizer = "
                             "'sgd' (and a fl.lr for it)")
        for key in ("dropout", "stragglers"):
            if not 0 <= getattr(self, key) <= 1:
                raise UsageError(f"fl.{key} = {getattr(self, key)}: must be a probability in [0, 1]")
        if self.straggler_slowdown < 1:
            raise UsageError(f"fl.straggler_slowdown = {self.straggler_slowdown}: must be >= 1")
        if self.deadline < 0:
            raise UsageError(f"fl.deadline = {self.deadline}: must be >= 0 (0 = no deadline)")
        _at_least("fl.min_clients", self.min_clients, 1)
        if self.max_update_norm < 0:
            raise UsageError(f"fl.max_update_norm = {self.max_update_norm}: must be >= 0 (0 = no limit)")
        if self.max_norm_ratio != 0 and not self.max_norm_ratio > 1:
            raise UsageError(f"fl.max_norm_ratio = {self.max_norm_ratio}: must be > 1 (or 0 = no check)")
        if not 0 <= self.malicious_fraction <= 1:
            raise UsageError(f"fl.malicious_fraction = {self.malicious_fraction}: must be in [0, 1]")
        _choice("fl.attack", self.attack, ("sign_flip", "scale", "random"))
        if self.attack_scale <= 0:
            raise UsageError(f"fl.attack_scale = {self.attack_scale}: must be > 0")
        if not 0 <= self.trim_beta < 0.5:
            raise UsageError(f"fl.trim_beta = {self.trim_beta}: must be in [0, 0.5)")
        _at_least("fl.krum_byzantine", self.krum_byzantine, 0)
        _at_least("fl.krum_keep", self.krum_keep, 1)
        n, f = self.clients_per_round, self.krum_byzantine
        if self.strategy == "krum" and n <= 2 * f + 2:
            raise UsageError(f"fl.krum_byzantine = {f}: Krum needs fl.clients_per_round > 2 * krum_byzantine + 2 "
                             f"(it is {n}); sample more clients or assume fewer attackers")
        if self.strategy == "krum" and self.krum_keep > n - f:
            raise UsageError(f"fl.krum_keep = {self.krum_keep}: Multi-Krum keeps at most fl.clients_per_round - "
                             f"krum_byzantine = {n - f} updates")
        if self.max_norm_ratio and n < 3:
            raise UsageError(f"fl.max_norm_ratio compares each update with the round's median: it needs "
                             f"fl.clients_per_round >= 3 (it is {n})")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UsageError(f"fl.device = {self.device!r}: use auto, cpu, cuda or cuda:N")
        for key in ("lr", "weight_decay", "mu", "server_lr", "tau"):
            if getattr(self, key) < 0:
                raise UsageError(f"fl.{key} = {getattr(self, key)}: must be >= 0")
        for key in ("server_momentum", "beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UsageError(f"fl.{key} = {getattr(self, key)}: must be in [0, 1)")


@dataclass
class CommConfig:
    dtype: str = doc("tensors on the wire: float32 | float16 | bfloat16 | int8 (blockwise absmax, 64 values a "
                     "block) | nf4 (4-bit NormalFloat, 64 a block); int8/nf4 clients send their update, quantised",
                     default="float32")
    error_feedback: bool = doc("int8/nf4: each client adds what quantisation dropped from its last update to its "
                               "next one", default=True)
    budget_mb: float = doc("upload budget of the run in MB (0 = none): the run ends cleanly after the round past "
                           "which the next round's uploads would exceed it (results.json: upload_budget)", default=0.0)

    def check(self) -> None:
        _choice("comm.dtype", self.dtype, ("float32", "float16", "bfloat16", "int8", "nf4"))
        if self.budget_mb < 0:
            raise UsageError(f"comm.budget_mb = {self.budget_mb}: must be >= 0 (0 = no budget)")


@dataclass
class DPConfig:
    mode: str = doc("differential privacy: none | client (DP-FedAvg: clip each client's update, Gaussian noise on "
                    "the average, accounted over rounds) | sample (DP-SGD inside each client through Opacus, "
                    "accounted per client over its steps)", default="none")
    clip: float = doc("client: L2 norm each client's update is clipped to (the start of adaptive clipping); "
                      "sample: L2 norm each example's gradient is clipped to", default=1.0)
    noise_multiplier: float = doc("noise std is noise_multiplier * clip (client: on the summed updates; sample: on "
                                  "each batch's summed gradients)", default=1.0)
    target_epsilon: float = doc("calibrate noise_multiplier so the whole run spends this epsilon (0 = use "
                                "noise_multiplier as given)", default=0.0)
    delta: float = doc("the delta of (epsilon, delta)-DP", default=1e-5)
    adaptive_clip: bool = doc("adapt the clip to a quantile of the update norms (Andrew et al. 2021)", default=False)
    target_quantile: float = doc("adaptive clip: share of updates meant to fall under the clip", default=0.5)
    clip_lr: float = doc("adaptive clip: geometric step size of the clip update", default=0.2)
    count_noise: float = doc("adaptive clip: noise std on the count of unclipped updates (0 = clients_per_round "
                             "/ 20, as Andrew et al.)", default=0.0)

    def check(self) -> None:
        _choice("dp.mode", self.mode, ("none", "client", "sample"))
        if not self.clip > 0:
            raise UsageError(f"dp.clip = {self.clip}: must be > 0")
        if self.noise_multiplier < 0 or self.target_epsilon < 0 or self.count_noise < 0:
            bad = next(k for k in ("noise_multiplier", "target_epsilon", "count_noise") if getattr(self, k) < 0)
            raise UsageError(f"dp.{bad} = {getattr(self, bad)}: must be >= 0")
        if not 0 < self.delta < 1:
            raise UsageError(f"dp.delta = {self.delta}: must be in (0, 1)")
        if not 0 < self.target_quantile < 1:
            raise UsageError(f"dp.target_quantile = {self.target_quantile}: must be in (0, 1)")
        if not self.clip_lr > 0:
            raise UsageError(f"dp.clip_lr = {self.clip_lr}: must be > 0")


@dataclass
class ProxyConfig:
    kind: str = doc("clients train a smaller proxy of the model: none | fedpft (compressed FFNs, aligned to the "
                    "full model by distillation) | fedot (layers dropped, no alignment: the offsite-tuning "
                    "baseline); the server plugs what they learn into the full model to evaluate", default="none")
    path: str = doc("a sub-model folder made by `fedft proxy build` ('' = build it at the start of the run from "
                    "the settings below)", default="")
    keep_layers: list[int] = doc("layers kept whole (negative counts from the end)", default_factory=lambda: [0, -1])
    ffn_neurons: int = doc("fedpft: FFN neurons kept in every other layer, by saliency (0 = a quarter of the "
                           "FFN width)", default=0)
    drop_layers: list[int] = doc("fedot: layers removed ([] = every second layer not in keep_layers)",
                                 default_factory=list)
    distill_data: str = doc("server-held unlabelled data for alignment: auto (text: wordnet-verbs, images: "
                            "digits) | wordnet-verbs | digits | fashion-mnist | file:PATH (one text per line)",
                            default="auto")
    distill_steps: int = doc("fedpft: layer-level distillation steps before FL (0 = none)", default=200)
    distill_lr: float = doc("fedpft: learning rate (AdamW) of both distillations", default=1e-3)
    distill_batch: int = doc("fedpft: distillation batch size", default=32)
    align_every: int = doc("fedpft: neuron-level alignment every this many rounds (0 = never)", default=5)
    align_keep: float = doc("fedpft: share of each compressed FFN's neurons kept frozen (the most active) when "
                            "re-distilling", default=0.5)
    align_steps: int = doc("fedpft: distillation steps of each neuron-level alignment", default=50)
    align_stat: str = doc("fedpft: per-neuron activity the clients report: mean_abs (mean |activation|) | "
                          "zero_share (share of activations at zero, as published)", default="mean_abs")

    def check(self) -> None:
        _choice("proxy.kind", self.kind, ("none", "fedpft", "fedot"))
        _choice("proxy.align_stat", self.align_stat, ("mean_abs", "zero_share"))
        _at_least("proxy.ffn_neurons", self.ffn_neurons, 0)
        _at_least("proxy.distill_steps", self.distill_steps, 0)
        _at_least("proxy.distill_batch", self.distill_batch, 1)
        _at_least("proxy.align_every", self.align_every, 0)
        _at_least("proxy.align_steps", self.align_steps, 0)
        if not self.distill_lr > 0:
            raise UsageError(f"proxy.distill_lr = {self.distill_lr}: must be > 0")
        if not 0 <= self.align_keep <= 1:
            raise UsageError(f"proxy.align_keep = {self.align_keep}: must be a share in [0, 1]")


@dataclass
class TaskConfig:
    name: str = doc("what the model learns: auto (from the data: instructions -> instruct, labels -> classify) | "
                    "classify (a head on the pooled states) | instruct (a causal LM learns the responses)",
                    default="auto")
    generate: int = doc("instruct: held-out examples answered by greedy generation at each evaluation (ROUGE-L, "
                        "exact match); the first ones of the test set, the same every round", default=32)
    max_new_tokens: int = doc("instruct: longest generated answer, in tokens", default=48)

    def check(self) -> None:
        _choice("task.name", self.name, ("auto", "classify", "instruct"))
        _at_least("task.generate", self.generate, 0)
        _at_least("task.max_new_tokens", self.max_new_tokens, 1)


@dataclass
class LogConfig:
    tensorboard: bool = doc("write each round's metrics, bytes and epsilon as TensorBoard scalars under "
                            "RUN/tensorboard (tensorboard --logdir RUN)", default=False)
    mlflow_uri: str = doc("also log the config and each round's metrics to this MLflow tracking URI (a folder or "
                          "a server; needs the mlflow package); empty = no MLflow", default="")

    def check(self) -> None:
        import importlib.util

        if self.mlflow_uri and importlib.util.find_spec("mlflow") is None:
            raise UsageError(f"log.mlflow_uri = {self.mlflow_uri!r}: the mlflow package is not installed "
                             f"(pip install mlflow), or leave log.mlflow_uri empty")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("log.tensorboard = true: the tensorboard package is not installed (pip install "
                             "tensorboard)")


@dataclass
class DeployConfig:
    secagg: bool = doc("fedft deploy: aggregate through Flower's SecAgg+ workflow, so the server sees only the "
                       "weighted sum of the clients' parameters (quantised to secagg_bits bits within "
                       "+-secagg_clip)", default=False)
    secagg_clip: float = doc("SecAgg+: trainable values are clipped to [-secagg_clip, secagg_clip] before "
                             "quantisation", default=8.0)
    secagg_bits: int = doc("SecAgg+: quantisation levels are 2**secagg_bits (at most 30)", default=22)
    sim_client_cpus: float = doc("fl.backend = 'flower-sim': CPU cores each simulated client (Ray actor) gets; the "
                                 "clients trained at once are the machine's cores over this", default=1.0)
    timeout: float = doc("fedft deploy: seconds the server waits for a round's replies (0 = no limit); a "
                         "SuperNode that has not replied by then counts as dropped out", default=0.0)

    def check(self) -> None:
        if self.secagg_clip <= 0:
            raise UsageError(f"deploy.secagg_clip = {self.secagg_clip}: must be > 0")
        if not 8 <= self.secagg_bits <= 30:
            raise UsageError(f"deploy.secagg_bits = {self.secagg_bits}: must be in [8, 30]")
        if not self.sim_client_cpus > 0:
            raise UsageError(f"deploy.sim_client_cpus = {self.sim_client_cpus}: must be > 0")
        if self.timeout < 0:
            raise UsageError(f"deploy.timeout = {self.timeout}: must be >= 0 (0 = no limit)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def check(self) -> None:
        for section in SECTIONS:
            getattr(self, section).check()
        if self.fl.clients_per_round > self.data.num_clients and not (self.data.partition == "natural"
                                                                      and self.data.num_clients == 0):
            raise UsageError(f"fl.clients_per_round = {self.fl.clients_per_round}: must be <= data.num_clients "
                             f"({self.data.num_clients})")
        if self.fl.min_clients > self.fl.clients_per_round:
            raise UsageError(f"fl.min_clients = {self.fl.min_clients}: must be <= fl.clients_per_round "
                             f"({self.fl.clients_per_round})")
        if self.method.rank_max and (self.method.name != "lora" or self.proxy.kind != "none"):
            raise UsageError("method.rank_max (heterogeneous ranks) is a lora option, without proxy.kind")
        if self.method.variant != "fedavg":
            v = f"method.variant = {self.method.variant!r}"
            if self.method.name != "lora":
                raise UsageError(f"{v} is a lora option; method.name = {self.method.name!r}")
            if (self.method.variant in ("fedex", "flora", "flexlora", "hetlora")
                    and self.fl.strategy not in ("fedavg", "fedprox")):
                raise UsageError(f"{v} replaces the data-weighted means of A and B by its own aggregate: it needs "
                                 f"fl.strategy = 'fedavg' or 'fedprox' (not {self.fl.strategy!r})")
            if self.fl.strategy in ("median", "trimmed_mean", "krum", "scaffold"):
                raise UsageError(f"{v} with fl.strategy = {self.fl.strategy!r}: not supported; use fedavg, fedprox, "
                                 f"fedavgm or fedadam")
            if self.method.variant in ("rolora", "fedsa") and self.dp.mode == "client":
                raise UsageError(f"{v} with dp.mode = 'client': DP-FedAvg here clips and noises every parameter of "
                                 f"the update, and these clients send only part of theirs; not supported yet")
            if self.method.variant in ("fedex", "flora", "flexlora", "hetlora") and self.dp.mode == "client":
                raise UsageError(f"{v} with dp.mode = 'client': its aggregate needs each client's own factors, which "
                                 f"DP-FedAvg releases only as a noised mean")
            if self.method.variant in ("fedex", "flora", "flexlora", "hetlora") and self.proxy.kind != "none":
                raise UsageError(f"{v} with proxy.kind: not supported (its aggregate acts on the sub-model's LoRA, "
                                 f"whose ranks and frozen weights are not the full model's)")
            if self.fl.mode != "federated":
                raise UsageError(f"{v} is an aggregation rule: it needs fl.mode = 'federated'")
        if self.method.name == "lora_sb":
            if self.dp.mode != "none":
                raise UsageError(f"method.name = 'lora_sb' with dp.mode = {self.dp.mode!r}: its initialisation sends the "
                                 f"clients' raw gradients, which the DP accounting here does not cover")
            if self.proxy.kind != "none":
                raise UsageError("method.name = 'lora_sb' with proxy.kind: not supported (B and A come from the full "
                                 "model's gradients)")
            if self.fl.mode != "federated":
                raise UsageError(f"method.name = 'lora_sb' needs fl.mode = 'federated' (its B and A come from the "
                                 f"clients' gradients before round 1), not {self.fl.mode!r}")
        if self.method.ffa and self.method.name != "lora":
            raise UsageError(f"method.ffa = true is a lora option; method.name = {self.method.name!r}")
        if self.dp.mode == "sample" and self.fl.strategy == "fedprox":
            raise UsageError("dp.mode = 'sample' with fl.strategy = 'fedprox': the proximal term's gradient is not "
                             "per-example, so DP-SGD cannot account for it; use fedavg, fedavgm or fedadam")
        if self.dp.mode == "sample" and self.fl.precision == "bf16":
            raise UsageError("dp.mode = 'sample' with fl.precision = 'bf16': Opacus' per-sample gradients need fp32; "
                             "use fl.precision = 'auto' or 'fp32'")
        if self.dp.mode == "sample" and self.dp.adaptive_clip:
            raise UsageError("dp.adaptive_clip is for dp.mode = 'client'")
        if self.method.name == "layers" and self.fl.mode != "federated":
            raise UsageError(f"method.name = 'layers' selects layers per client and round: it needs fl.mode = "
                             f"'federated' (not {self.fl.mode!r})")
        changed = [f.name for f in dataclasses.fields(ProxyConfig)
                   if f.name != "kind" and getattr(self.proxy, f.name) != getattr(ProxyConfig(), f.name)]
        if self.proxy.kind == "none" and changed:
            raise UsageError(f"proxy.{changed[0]} is set but proxy.kind = 'none': set proxy.kind = 'fedpft' or 'fedot' "
                             f"(or leave the proxy settings out)")
        built = [k for k in ("keep_layers", "ffn_neurons", "drop_layers", "distill_steps") if k in changed]
        if self.proxy.path and built:
            raise UsageError(f"proxy.{built[0]} has no effect with proxy.path: the sub-model folder was built (and "
                             f"aligned) with its own settings (its proxy.json); leave it out or rebuild the folder")
        if self.proxy.kind != "none" and self.method.name == "prompt" and self.method.deep:
            raise UsageError("method.deep = true with proxy.kind: per-layer prompts cannot be aligned or mapped "
                             "between the sub-model and the full model; use shallow prompts (method.deep = false)")
        if self.proxy.kind == "fedot" and self.proxy.ffn_neurons:
            raise UsageError("proxy.ffn_neurons is a fedpft setting; fedot drops whole layers (proxy.drop_layers)")
        if self.proxy.kind == "fedpft" and self.proxy.drop_layers:
            raise UsageError("proxy.drop_layers is a fedot setting; fedpft keeps every layer and cuts FFNs "
                             "(proxy.ffn_neurons)")
        if self.proxy.kind != "none" and self.fl.mode != "federated":
            raise UsageError(f"proxy.kind = {self.proxy.kind!r} needs fl.mode = 'federated' (not {self.fl.mode!r})")
        if self.proxy.kind == "fedpft" and self.proxy.align_every and self.dp.mode != "none":
            raise UsageError("proxy.align_every > 0 with dp.mode: the clients' activation statistics would leave them "
                             "outside the privacy accounting; set proxy.align_every = 0 under DP")
        if self.method.name == "layers" and self.proxy.kind != "none":
            raise UsageError("method.name = 'layers' with proxy.kind: not supported; choose one of the two")
        if self.fl.strategy in ("median", "trimmed_mean", "krum"):
            if self.method.name == "layers":
                raise UsageError(f"fl.strategy = {self.fl.strategy!r} with method.name = 'layers': clients send "
                                 f"different layers, which a robust aggregate over all updates cannot compare; use "
                                 f"fedavg")
            if self.dp.mode == "client":
                raise UsageError(f"fl.strategy = {self.fl.strategy!r} with dp.mode = 'client': DP-FedAvg's noise is "
                                 f"calibrated to the clipped mean; use fedavg (or a robust strategy without DP)")
        if self.method.name == "layers" and self.dp.mode != "none":
            raise UsageError("method.name = 'layers' with dp.mode: not supported (clients send different layers, "
                             "which the DP accounting here does not cover); use dp.mode = 'none'")
        if self.fl.strategy == "scaffold" and (self.dp.mode != "none" or self.method.name == "layers"):
            what = f"dp.mode = {self.dp.mode!r}" if self.dp.mode != "none" else "method.name = 'layers'"
            raise UsageError(f"fl.strategy = 'scaffold' with {what}: not supported (control variates assume every "
                             f"client sends every parameter, unclipped); use fedavg or fedprox")
        if self.dp.mode != "none" and self.fl.mode != "federated":
            raise UsageError(f"dp.mode = {self.dp.mode!r} needs fl.mode = 'federated' (not {self.fl.mode!r})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], check: bool = True) -> Config:
        """Build and check a config from nested {section: {key: value}} (a parsed TOML file)."""
        if not isinstance(raw, dict):
            raise UsageError("config must be a table of sections")
        sections = {}
        for name, value in raw.items():
            if name not in SECTIONS:
                raise UsageError(f"unknown config section [{name}]{_did_you_mean(name, SECTIONS)}; "
                                 f"allowed: {', '.join(SECTIONS)}")
            if not isinstance(value, dict):
                raise UsageError(f"config section [{name}] must be a table of key = value")
            sections[name] = value
        built = {name: _build(name, typ, sections.get(name, {})) for name, typ in SECTIONS.items()}
        config = cls(**built)
        config.check() if check else config.data.check()
        return config


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "method": MethodConfig, "fl": FLConfig, "comm": CommConfig,
    "dp": DPConfig, "proxy": ProxyConfig, "deploy": DeployConfig, "task": TaskConfig, "log": LogConfig,
}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), check: bool = True
                ) -> Config:
    """Read a TOML file (or the defaults), apply `section.key=value` overrides, check everything (check=False:
    only the keys' types and the [data] section, for commands that use nothing else)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"config file {str(path)!r} is not valid TOML: {e}") from None
        raw.pop("sweep", None)  # the grid of `fedft sweep`; a single run takes the rest of the file
    for item in overrides:
        key, value = parse_override(item)
        section, name = key
        if section not in SECTIONS:
            raise UsageError(f"--set {item!r}: unknown section {section!r}{_did_you_mean(section, SECTIONS)}; "
                             f"allowed: {', '.join(SECTIONS)}")
        if not isinstance(raw.setdefault(section, {}), dict):
            raise UsageError(f"config section [{section}] must be a table of key = value")
        raw[section][name] = value
    return Config.from_dict(raw, check)


def parse_override(item: str) -> tuple[tuple[str, str], Any]:
    """'fl.lr=0.001' -> (('fl', 'lr'), 0.001). Values are read as TOML, else kept as a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UsageError(f"--set {item!r}: expected section.key=value, e.g. fl.rounds=5")
    key, text = item.split("=", 1)
    section, _, name = key.strip().partition(".")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return (section, name), value


def help_lines() -> list[str]:
    """One line per config key: section.key, default and help text."""
    lines = []
    for section, typ in SECTIONS.items():
        for f in dataclasses.fields(typ):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"{section}.{f.name} = {default!r}  # {f.metadata['help']}")
    return lines


def _build(section: str, typ: type, values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(typ)}
    hints = typing.get_type_hints(typ)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"unknown config key {section}.{key}{_did_you_mean(key, fields)}; "
                             f"allowed in [{section}]: {', '.join(fields)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return typ(**kwargs)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (list, types.GenericAlias) or typ is list:
        item = (typing.get_args(typ) or (str,))[0]
        if isinstance(value, int) and not isinstance(value, bool) and item is int:  # --set proxy.keep_layers=0
            value = [value]
        if isinstance(value, str):  # --set method.targets=query,value
            value = [v.strip() for v in value.split(",") if v.strip()]
            if item is int:
                value = [int(v) if re.fullmatch(r"-?\d+", v) else v for v in value]
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise UsageError(f"{key} = {value!r}: must be a list of {'integers' if item is int else 'strings'}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{key} = {value!r}: must be true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UsageError(f"{key} = {value!r}: must be an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise UsageError(f"{key} = {value!r}: must be a finite number")
    if typ is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{key} = {value!r}: must be a string")
    raise TypeError(f"unsupported config type {typ} for {key}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{key} = {value!r}: choose one of {', '.join(allowed)}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise UsageError(f"{key} = {value}: must be >= {low}")


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
