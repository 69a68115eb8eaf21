"""One round of local training aggregated through Flower's SecAgg+ workflow: the server learns only the weighted
mean of the sampled clients' trainable parameters (each quantised to deploy.secagg_bits bits within
+-deploy.secagg_clip), never one client's."""
from __future__ import annotations

import numpy as np
import torch
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord

from fedft.fl.messages import Instruction, Update


class _OneRound(Strategy):
    """The legacy Strategy the SecAgg+ workflow drives: fit instructions for the sampled clients, and it keeps
    the unmasked aggregate."""

    def __init__(self, proxies: list[tuple[GridClientProxy, int]], rnd: int) -> None:
        self.proxies, self.rnd, self.results, self.aggregate = proxies, rnd, [], None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(proxy, FitIns(parameters, {"cid": cid, "round": self.rnd})) for proxy, cid in self.proxies]

    def aggregate_fit(self, server_round, results, failures):
        self.results = results  # each FitRes carries the aggregate as its parameters, and its own num_examples
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def secagg_round(clients, instructions: list[Instruction], rnd: int) -> list[Update]:
    """`clients` is the FlowerClients of the run. Every returned Update holds the same weighted mean (with that
    client's num_examples), so FedAvg over them gives the mean and the byte count stays per client."""
    names, grid, cfg = clients.names, clients.grid, clients.cfg
    run_id = clients.context.run_id
    cids = [i.cid for i in instructions]
    strategy = _OneRound([(GridClientProxy(clients.nodes[c], grid, run_id), c) for c in cids], rnd)
    context = LegacyContext(clients.context, config=ServerConfig(num_rounds=1), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd})
    start = instructions[0].state  # every sampled client starts from the global state
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([start[n].numpy() for n in names]), keep_input=True)
    workflow = SecAggPlusWorkflow(
        num_shares=1.0, reconstruction_threshold=0.5,  # every client holds a share of every other's key
        max_weight=float(max(max(clients.sizes.values()), 1)), clipping_range=cfg.secagg_clip,
        quantization_range=2 ** cfg.secagg_bits, modulus_range=2 ** 32, timeout=clients.timeout)
    workflow(grid, context)
    if strategy.aggregate is None:
        print(f"round {rnd}: SecAgg+ did not complete (too few clients answered): no update", flush=True)
        return []
    mean = {n: torch.from_numpy(np.array(a, dtype=np.float32))
            for n, a in zip(names, parameters_to_ndarrays(strategy.aggregate))}
    cid_of = {node: cid for cid, node in clients.nodes.items()}
    return [Update(cid_of[proxy.node_id], dict(mean), int(res.num_examples), float(res.metrics.get("loss", float("nan"))))
            for proxy, res in strategy.results]
