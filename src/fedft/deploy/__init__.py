"""fedft on Flower: the same experiment as `fedft run`, with each client's local training on its own SuperNode.

The ServerApp (`fedft.deploy.app:server`) runs `fedft.run` on the SuperLink's host: sampling, aggregation (every
fedft strategy, client-level DP), evaluation and the result files are the simulation's own code; only the local
training of the sampled clients is sent, as Flower messages carrying the trainable parameters alone, to the
SuperNodes. Each SuperNode is one client: a partition of a built-in data set (node config `partition-id`, for
demos and tests) or its own local data (`data=csv:PATH` or `data=imagefolder:PATH`). With `deploy.secagg` the
round goes through Flower's SecAgg+ workflow and the server sees only the weighted sum of the updates.

`fedft deploy certs | superlink | supernode | run` (fedft.deploy.commands) wrap the Flower processes.
"""
from __future__ import annotations

import os
import sys

from fedft.config import Config
from fedft.errors import UsageError

# Every process that runs Flower: no telemetry, no update check, and above all no runtime dependency
# installation (it would `uv sync` the app and pull a CUDA torch)
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def flower_env() -> dict[str, str]:
    """This process's environment with FLOWER_ENV set (a caller's own FLWR_* settings are kept)."""
    env = dict(os.environ)
    for k, v in FLOWER_ENV.items():
        env.setdefault(k, v)
    # Flower starts its own helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name: from this Python's
    # environment, also when it is not activated
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def require_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise UsageError("fedft deploy needs Flower: pip install 'fedft[flower]' (flwr==1.41.0)") from None


def check_deployable(config: Config) -> None:
    """What cannot run on Flower (fedft deploy, fl.backend = "flower-sim") yet: one clear line each."""
    where = "runs on fedft's engine only (fl.backend = 'engine'), not on Flower (fedft deploy, flower-sim)"
    if config.fl.mode != "federated":
        raise UsageError(f"fl.mode = {config.fl.mode!r} {where}: on Flower a run is federated")
    if config.proxy.kind != "none":
        raise UsageError(f"proxy.kind {where}: FedPFT's neuron-level alignment gathers client statistics that are "
                         f"not sent over Flower yet (a sub-model as model.name works)")
    if config.method.name == "layers":
        raise UsageError(f"method.name = 'layers' {where}: the importance reports are not sent over Flower yet")
    if config.dp.mode == "sample":
        raise UsageError(f"dp.mode = 'sample' {where}; client-level DP (dp.mode = 'client') works on Flower")
    if config.fl.strategy == "scaffold":
        raise UsageError(f"fl.strategy = 'scaffold' {where}: its control variates are not sent over Flower yet")
    if config.method.variant == "rolora":
        raise UsageError(f"method.variant = 'rolora' {where}: which factor a round trains is not sent over Flower yet")
    if config.method.rank_max or config.method.variant in ("flexlora", "hetlora"):
        raise UsageError(f"heterogeneous LoRA ranks and method.variant = 'flexlora' or 'hetlora' {where}: each client's own rank "
                         f"is not sent over Flower yet")
    if config.method.name == "lora_sb":
        raise UsageError(f"method.name = 'lora_sb' {where}: its B and A come from the clients' gradients gathered "
                         f"before round 1, which is not done over Flower yet")
    if config.method.variant == "fedsa":
        raise UsageError(f"method.variant = 'fedsa' {where}: the nodes do not keep their own B between rounds yet")
    if config.method.variant in ("fedex", "flora"):
        raise UsageError(f"method.variant = {config.method.variant!r} {where}: each node keeps its own frozen weights, which the folded "
                         f"residual is not sent to over Flower yet")
    if config.deploy.secagg:
        if config.dp.mode != "none":
            raise UsageError("deploy.secagg with dp: the server adds its noise to the sum it sees; SecAgg+ and "
                             "client-level DP together are not supported")
        if config.fl.strategy not in SECAGG_STRATEGIES:
            raise UsageError(f"deploy.secagg with fl.strategy = {config.fl.strategy!r}: under SecAgg+ the server "
                             f"sees only the weighted mean; use one of {', '.join(SECAGG_STRATEGIES)}")
        if config.fl.clients_per_round < 2:
            raise UsageError("deploy.secagg needs fl.clients_per_round >= 2 (a sum of one update hides nothing)")


SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
