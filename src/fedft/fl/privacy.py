"""Client-level differential privacy: DP-FedAvg (McMahan et al., 2018) with fixed or adaptive clipping
(Andrew et al., 2021), shaped after Flower's DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping.

Each client's update (trained state - the state it started from) is clipped to L2 norm `clip`; the
server averages the clipped updates with equal weights and adds Gaussian noise of std
z * clip / n (n = updates averaged, z = the noise multiplier), so one client's presence changes the
average by at most clip / n and is hidden by the noise. The privacy loss over rounds, with clients sampled
at rate clients_per_round / num_clients, is accounted by Opacus' RDP accountant.
"""
from __future__ import annotations

import math
import warnings

import torch

from fedft.config import Config, DPConfig
from fedft.errors import UsageError
from fedft.fl.aggregate import State, subtract
from fedft.fl.client import client_seed
from fedft.fl.parts import Build, part


def update_norm(delta: State) -> float:
    """L2 norm over all tensors of an update, as if flattened into one vector."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


def clip_update(delta: State, clip: float) -> tuple[State, float]:
    """(delta scaled to norm <= clip, its norm before clipping)."""
    norm = update_norm(delta)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in delta.items()}, norm


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon spent after `rounds` releases of the noised average (Opacus' RDP accountant)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a looser, still valid bound
        return float(accountant.get_epsilon(delta))


def calibrate(target_epsilon: float, delta: float, sample_rate: float, rounds: int, unit: str = "rounds") -> float:
    """The noise multiplier with which `rounds` releases (rounds, or a client's local steps) spend (just
    under) target_epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    need = epsilon(1e3, sample_rate, rounds, delta)
    if need > target_epsilon:  # fail at once (Opacus' own search takes a minute to give up)
        raise UsageError(f"dp.target_epsilon = {target_epsilon}: cannot be met in {rounds} {unit} at sampling rate "
                         f"{sample_rate:.3g} (even noise multiplier 1000 spends epsilon {need:.3g}); raise the "
                         f"target or lower fl.rounds or fl.clients_per_round")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=rounds, accountant="rdp",
                                              epsilon_tolerance=0.005))
    except ValueError:
        need = epsilon(1e3, sample_rate, rounds, delta)
        raise UsageError(f"dp.target_epsilon = {target_epsilon}: cannot be met in {rounds} {unit} at sampling rate "
                         f"{sample_rate:.3g} (even noise multiplier 1000 spends epsilon {need:.3g}); raise the "
                         f"target or lower fl.rounds or fl.clients_per_round") from None


def calibrate_worst(target_epsilon: float, delta: float, spends: list[tuple[float, int]], tolerance: float = 0.005
                    ) -> float:
    """The noise multiplier with which the client that spends most, of clients spending `steps` DP-SGD steps at
    `sample_rate` each ((rate, steps) pairs), spends just under target_epsilon (within `tolerance`, relative)."""
    spends = sorted({(r, s) for r, s in spends if s > 0})

    def worst(z: float) -> float:
        return max(epsilon(z, r, s, delta) for r, s in spends)

    if not spends:
        return 0.0
    if worst(1e3) > target_epsilon:
        rate, steps = max(spends, key=lambda p: epsilon(1e3, p[0], p[1], delta))
        raise UsageError(f"dp.target_epsilon = {target_epsilon}: cannot be met: a client takes {steps} local steps "
                         f"at sampling rate {rate:.3g} (even noise multiplier 1000 spends epsilon "
                         f"{worst(1e3):.3g}); raise the target or lower fl.rounds or fl.clients_per_round")
    lo, hi = 1e-2, 1e3  # worst() falls as z grows; bisect in log space
    if worst(lo) <= target_epsilon:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if worst(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
        if worst(hi) >= target_epsilon * (1 - tolerance):
            break
    return hi


class ClientDP:
    """The server side of DP-FedAvg: clip, average with equal weights, add noise; adapt the clip if asked."""

    def __init__(self, cfg: DPConfig, clients_per_round: int, sample_rate: float, noise_multiplier: float,
                 seed: int) -> None:
        self.cfg, self.sample_rate = cfg, sample_rate
        self.clip = cfg.clip
        self.noise_multiplier = noise_multiplier  # the privacy noise z the accountant sees
        self.count_noise = cfg.count_noise or clients_per_round / 20
        if cfg.adaptive_clip and noise_multiplier > 0:
            # Andrew et al.: part of the privacy noise goes to the count of unclipped updates
            if 2 * self.count_noise <= noise_multiplier:
                raise UsageError(f"dp.adaptive_clip: dp.count_noise = {self.count_noise:g} must be > "
                                 f"noise_multiplier / 2 = {noise_multiplier / 2:g}; raise dp.count_noise")
            self.update_noise = (noise_multiplier ** -2 - (2 * self.count_noise) ** -2) ** -0.5
        else:
            self.update_noise = noise_multiplier
        self.generator = torch.Generator().manual_seed(seed)

    def describe(self, rounds: int) -> dict:
        """What results.json says of this DP: the noise and the epsilon the whole run will spend."""
        return {"mode": "client", "noise_multiplier": self.noise_multiplier,
                "update_noise_multiplier": self.update_noise, "sample_rate": self.sample_rate,
                "delta": self.cfg.delta, "planned_epsilon": self.epsilon(rounds)}

    def epsilon(self, releases: int) -> float:
        """Epsilon spent after `releases` noised averages."""
        return epsilon(self.noise_multiplier, self.sample_rate, releases, self.cfg.delta)

    def private_mean(self, current: State, states: list[State]) -> tuple[State, dict]:
        """current + noised mean of the clipped updates; and what happened (for results.json)."""
        clipped, norms = zip(*(clip_update(subtract(s, current), self.clip) for s in states))
        n = len(states)
        std = self.update_noise * self.clip / n
        out = {}
        for k, base in current.items():
            mean = sum(c[k].double() for c in clipped) / n
            noise = torch.randn(base.shape, generator=self.generator, dtype=torch.float64) * std
            out[k] = (base.double() + mean + noise).to(base.dtype)
        info = {"clip": self.clip, "noise_std": std, "clipped": sum(nm > self.clip for nm in norms),
                "mean_update_norm": sum(norms) / n}
        if self.cfg.adaptive_clip:
            self.clip = self._next_clip(norms)
        return out, info

    def _next_clip(self, norms) -> float:
        """Geometric update toward the target quantile, from a noised count of unclipped updates."""
        unclipped = sum(nm <= self.clip for nm in norms)
        noisy = unclipped + float(torch.randn((), generator=self.generator, dtype=torch.float64)) * self.count_noise
        share = noisy / len(norms)
        return self.clip * math.exp(-self.cfg.clip_lr * (share - self.cfg.target_quantile))


class SampleDP:
    """Sample-level DP: DP-SGD inside each client through Opacus (per-sample gradients of the trainable
    parameters only, each clipped to `clip`, Gaussian noise of std z * clip on their sum), and an RDP
    accountant per client over the steps it took. Batches are the client's shuffled fixed-size batches,
    accounted as if sampled at rate batch_size / client size (the usual approximation)."""

    def __init__(self, cfg: DPConfig, model: torch.nn.Module, noise_multiplier: float) -> None:
        from opacus import GradSampleModule

        self.cfg, self.noise_multiplier = cfg, noise_multiplier
        self.module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        per_example_embedding_inputs(self.module)
        # Opacus' hooks fire on frozen layers too, whose inputs need no gradient: expected, not a problem
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        self.history: dict[int, list[tuple[float, float, int]]] = {}  # client -> Opacus accountant history

    def optimizer(self, params, cfg, seed: int):
        from opacus.optimizers import DPOptimizer

        from fedft.fl.client import make_optimizer

        inner = make_optimizer(params, cfg)
        device = next(iter(params.values())).device  # Opacus draws the noise on the parameters' device
        return DPOptimizer(inner, noise_multiplier=self.noise_multiplier, max_grad_norm=self.cfg.clip,
                           expected_batch_size=cfg.batch_size,
                           generator=torch.Generator(device=device).manual_seed(seed))

    def describe(self) -> dict:
        return {"mode": "sample", "noise_multiplier": self.noise_multiplier, "clip": self.cfg.clip,
                "delta": self.cfg.delta}

    def record(self, client: int, steps: int, sample_rate: float) -> None:
        self.history.setdefault(client, []).append((self.noise_multiplier, sample_rate, steps))

    def epsilon(self) -> float:
        """The largest epsilon any client has spent so far."""
        from opacus.accountants import RDPAccountant

        worst = 0.0
        for history in self.history.values():
            if self.noise_multiplier == 0:
                return math.inf
            acc = RDPAccountant()
            acc.history = list(history)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                worst = max(worst, float(acc.get_epsilon(self.cfg.delta)))
        return worst


def per_example_embedding_inputs(module: torch.nn.Module) -> None:
    """Inside calls of `module` (the DP-SGD wrapper; evaluation calls the bare model and is untouched), give every
    embedding one row of indices per example. Models look up positions (BERT's, GPT-2's
    position_ids buffer) or token types with one (1, length) row broadcast over the batch, so Opacus would record a
    per-sample gradient with batch dimension 1 for that table and fail to clip it ("stack expects each tensor to be
    equal size") once the table is trainable (method full). Expanding the row to the batch changes no output: the
    embedding is the same for every example and the broadcast sum is the same sum."""
    batch = {}

    def remember(_module, args, kwargs):
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        batch["size"] = None if first is None or first.dim() == 0 else first.shape[0]

    def forget(*_):
        batch["size"] = None

    def expand(_module, args):
        n = batch.get("size")
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1 and args[0].shape[0] == 1 and n and n > 1:
            return (args[0].expand(n, *args[0].shape[1:]), *args[1:])
        return None

    module.register_forward_pre_hook(remember, with_kwargs=True)
    module.register_forward_hook(forget)
    for m in module.modules():
        if isinstance(m, torch.nn.Embedding):
            m.register_forward_pre_hook(expand)


def check_per_sample_gradients(dp: SampleDP, params: dict, inputs: dict, labels: torch.Tensor, loss_fn=None) -> None:
    """One backward pass: every trainable tensor must get per-sample gradients from Opacus, else name it."""
    dp.module.train()
    from fedft.fl.client import default_loss

    try:
        (loss_fn or default_loss())(dp.module(**inputs), labels).backward()
        batch = len(labels)
        missing = [f"{n} (used outside its module's forward)" for n, p in params.items()
                   if getattr(p, "grad_sample", None) is None]
        missing += [f"{n} (shared by the whole batch: its per-sample gradient has batch size {p.grad_sample.shape[0]}, "
                    f"not {batch})" for n, p in params.items()
                    if getattr(p, "grad_sample", None) is not None and p.grad_sample.shape[0] != batch]
    except (TypeError, RuntimeError, NotImplementedError) as e:  # Opacus' fallback cannot call a module
        missing = [f"this method's parameters ({type(e).__name__}: {str(e).splitlines()[0][:120]})"]
    for p in params.values():
        p.grad, p.grad_sample = None, None
    if missing:
        raise UsageError(f"dp.mode = 'sample': Opacus cannot compute per-sample gradients for {missing[0]}; use "
                         f"method lora, bias, adapter, head or full, or dp.mode = 'client'")


NOISE_STREAM = 10 ** 6 + 6  # a tag no round number reaches: (seed, tag) never equals a client's (seed, round, 0)


def client_dp(config: Config, num_clients: int | None = None) -> ClientDP | None:
    """The server's DP-FedAvg for dp.mode = client (noise calibrated to dp.target_epsilon if set), else None.
    `num_clients`: the clients the run really has (natural clients: as many as the data names), else
    data.num_clients."""
    if config.dp.mode != "client":
        return None
    fl = config.fl
    rate = fl.clients_per_round / (num_clients or config.data.num_clients)
    z = calibrate(config.dp.target_epsilon, config.dp.delta, rate, fl.rounds) if config.dp.target_epsilon \
        else config.dp.noise_multiplier
    return ClientDP(config.dp, fl.clients_per_round, rate, z, client_seed(fl.seed, NOISE_STREAM))


def sample_level_dp(config: Config, exp) -> SampleDP | None:
    """DP-SGD inside clients for dp.mode = sample, else None. The noise for dp.target_epsilon is calibrated to the
    run's real participation: the rounds each client will train (the loop's seeded sampling, dropout and deadline,
    known before the run), its local steps and its sampling rate, so the client that spends most ends just under
    the target. (Sizing it for the smallest client taking part in every round spent about half the target.)"""
    import numpy as np

    from fedft.fl.availability import local_steps, participation

    if config.dp.mode != "sample":
        return None
    fl = config.fl
    z = config.dp.noise_multiplier
    if config.dp.target_epsilon:
        sizes = [len(c) for c in exp.clients]
        rounds = participation(fl, sizes)
        z = calibrate_worst(config.dp.target_epsilon, config.dp.delta,
                            [(min(1.0, fl.batch_size / n), k * local_steps(n, fl)) for n, k in zip(sizes, rounds) if n])
    dp = SampleDP(config.dp, exp.model, z)
    check_per_sample_gradients(dp, exp.params, *exp.train.batch(np.arange(min(2, len(exp.train)))), exp.task.loss)
    return dp


@part(30)
def client_level(b: Build) -> None:
    """dp.mode = client: the strategy is wrapped in DP-FedAvg's clipping and noise."""
    from fedft.fl.strategies.private import PrivateStrategy

    dp = client_dp(b.exp.config, len(b.exp.clients))
    if dp is not None:
        b.fed.strategy = PrivateStrategy(b.fed.strategy, dp)
        b.record["dp"] = dp.describe(b.exp.config.fl.rounds)


@part(31)
def sample_level(b: Build) -> None:
    """dp.mode = sample: clients train with DP-SGD (in fp32: Opacus' per-sample gradients want one dtype)."""
    from fedft.fl.runners import SampleDP as SampleDPRunner

    dp = sample_level_dp(b.exp.config, b.exp)
    if dp is not None:
        b.fed.runner = SampleDPRunner(b.pool, dp)
        b.record["dp"] = dp.describe()


@part(1)
def sample_level_precision(b: Build) -> None:
    """dp.mode = sample keeps fp32 under fl.precision = auto (an explicit bf16 is refused by the config check),
    decided before the parts that compute (the feature cache, FedPFT's statistics) take the run's precision."""
    from fedft.fl.precision import keep_fp32

    if b.exp.config.dp.mode == "sample":
        b.exp.precision = keep_fp32(b.exp.precision, b.exp.config.fl.precision,
                                    "dp.mode = sample (Opacus' per-sample gradients need fp32)")
        b.pool.cfg.precision = b.exp.precision.used
