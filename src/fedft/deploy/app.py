"""The Flower app: `server` (ServerApp) runs fedft.run on the SuperLink's host and sends each sampled client's local
training to its SuperNode; `client` / `client_secagg` (ClientApps) train one client there.

Messages carry the trainable parameters only (ArrayRecord, float32: the server applies comm.dtype to what comes
back, as in the simulation, so bytes and rounding match `fedft run`). Run config keys: `fedft-config` (the
experiment as JSON), `out` (the results folder on the SuperLink's host) and `resume` (continue the run there). Node config keys: `partition-id`
(which client this node is), `num-partitions` (checked against data.num_clients), and optionally `data`
(csv:, tsv:, jsonl:, parquet:, hf: or imagefolder:PATH: this node's own training data instead of a partition of data.name).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.serverapp import Grid, ServerApp

from fedft.config import Config
from fedft.data.clients import Clients
from fedft.errors import UsageError
from fedft.fl.messages import Instruction, State, Update
from fedft.fl.runners import Runner

server = ServerApp()
client = ClientApp()
client_secagg = ClientApp(mods=[secaggplus_mod])


def run_config(context: Context) -> Config:
    return Config.from_dict(json.loads(str(context.run_config["fedft-config"])))


@server.main()
def main(grid: Grid, context: Context) -> None:
    import fedft
    from fedft.deploy import check_deployable

    config = run_config(context)
    check_deployable(config)
    out = str(context.run_config["out"])
    fedft.run(config, out, log=lambda line: print(line, flush=True),
              remote=lambda exp: FlowerClients(grid, context, exp), resume=bool(context.run_config.get("resume")))


class FlowerClients(Runner):
    """The runner of a deployed run: train the instructed clients on their SuperNodes, return the updates that came
    back (in the order of the instructions; a node that fails or misses deploy.timeout counts as dropped out)."""

    def __init__(self, grid: Grid, context: Context, exp, tick=lambda: None) -> None:
        self.grid, self.context, self.names = grid, context, list(exp.params)
        self.cfg = exp.config.deploy
        self.timeout = self.cfg.timeout or None
        self.tick = tick
        self.virtual = bool(context.run_config.get("virtual-clients"))  # flower-sim without SecAgg+ (app_dir)
        n = exp.config.data.num_clients
        self.nodes, self.sizes = virtual_nodes(grid, exp.clients) if self.virtual else connect(grid, n, exp.classes)

    def train(self, rnd: int, instructions: list[Instruction]) -> list[Update]:
        updates = self._train(rnd, instructions)
        for _ in instructions:
            self.tick()
        return updates

    def _train(self, rnd: int, instructions: list[Instruction]) -> list[Update]:
        if self.cfg.secagg:
            from fedft.deploy.secagg import secagg_round

            return secagg_round(self, instructions, rnd)
        cids = [i.cid for i in instructions]
        msgs = [Message(RecordDict({"arrays": ArrayRecord({n: i.state[n].contiguous() for n in self.names}),
                                    "config": ConfigRecord({"cid": i.cid, "round": rnd})}),
                        dst_node_id=self.nodes[i.cid], message_type="train")
                for i in instructions]
        t0 = time.perf_counter()
        replies = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(msgs, timeout=self.timeout)}
        wall = time.perf_counter() - t0
        updates = []
        for cid in cids:
            reply = replies.get(self.nodes[cid])
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                if self.virtual:  # a simulated node does not drop out: it failed, or the runtime is stopping (Ctrl-C)
                    raise RuntimeError(f"round {rnd}: simulated client {cid} failed ({why}); the round is not kept")
                print(f"round {rnd}: client {cid} (node {self.nodes[cid]}) dropped out: {why}", flush=True)
                continue
            state = reply.content["arrays"].to_torch_state_dict()
            metrics = reply.content["metrics"]
            updates.append(Update(cid, {n: state[n] for n in self.names}, int(metrics["num-examples"]),
                                  float(metrics["loss"])))
        if updates:
            m = [r.content["metrics"] for r in replies.values() if not r.has_error()]
            mean = {k: float(np.mean([float(x[k]) for x in m])) for k in ("startup-s", "load-s", "train-s")}
            print(f"round {rnd}: {len(updates)} clients in {wall:.1f} s; per client {mean['startup-s']:.1f} s "
                  f"start-up, {mean['load-s']:.1f} s loading, {mean['train-s']:.1f} s training", flush=True)
        return updates


def virtual_nodes(grid: Grid, clients: Clients, wait: float = 600.0) -> tuple[dict[int, int], dict]:
    """Flower's simulation: every node's worker holds every partition (the prepared experiment does not depend on
    the partition id), so client c trains on the c-th node id in order and its message names c; the server knows
    the sizes from its own split. Asking each of N nodes which client it is costs a message each: about 10 ms a
    node on the 2-core CPU (1,000 clients started in 51 s, 5,000 in 92 s; by that slope 17 minutes at 100,000)."""
    ids = sorted(_node_ids(grid, len(clients), wait, "simulated nodes registered"))
    return dict(enumerate(ids[: len(clients)])), dict(enumerate(clients.sizes.tolist()))


def _node_ids(grid: Grid, n: int, wait: float, what: str = "SuperNodes connected", hint: str = "") -> list[int]:
    """The ids of the grid's nodes once there are at least n (waiting up to `wait` seconds)."""
    t0 = time.monotonic()
    while len(ids := list(grid.get_node_ids())) < n:
        if time.monotonic() - t0 > wait:
            raise UsageError(f"{len(ids)} of data.num_clients = {n} {what} within {wait:.0f} s{hint}")
        time.sleep(0.5)
    return ids


def connect(grid: Grid, num_clients: int, classes: list[str], wait: float = 600.0) -> tuple[dict[int, int], dict]:
    """Wait for the SuperNodes, ask each which client it is: {client id: node id}, {client id: examples}. A node
    prepares its client (loads the model and its data) to answer, which on a busy host takes minutes."""
    ids = _node_ids(grid, num_clients, wait, hint="; start one per client (fedft deploy supernode --partition-id I)")
    msgs = [Message(RecordDict({"config": ConfigRecord({"classes": json.dumps(classes)})}), dst_node_id=nid,
                    message_type="query") for nid in ids]
    nodes, sizes, errors = {}, {}, []
    for reply in grid.send_and_receive(msgs, timeout=wait):
        if reply.has_error():  # a node that could not load its client, or one gone (a crashed node that rejoined
            errors.append(f"SuperNode {reply.metadata.src_node_id}: {reply.error.reason}")  # under a new id)
            continue
        cid = int(reply.content["config"]["cid"])
        if cid in nodes:
            raise UsageError(f"two SuperNodes ({nodes[cid]}, {reply.metadata.src_node_id}) both have partition-id {cid}")
        nodes[cid], sizes[cid] = reply.metadata.src_node_id, int(reply.content["config"]["examples"])
    missing = sorted(set(range(num_clients)) - set(nodes))
    if missing:
        raise UsageError(f"no SuperNode answered for partition-id {missing[0]} (of {num_clients} clients)"
                         + (f"; {errors[0]}" if errors else ""))
    for e in errors:  # every client has a node: the others are stale
        print(f"ignored {e}", flush=True)
    return nodes, sizes


# ---------------------------------------------------------------- the client side


@dataclasses.dataclass
class Node:
    """One SuperNode's client: the shared model with the method applied, its data, and the simulation's runner."""
    cid: int
    config: Config
    model: torch.nn.Module
    train: object
    clients: list[np.ndarray]
    lr: float
    classes: list[str]
    task: str = "classify"  # the run's task (its loss trains this node)

    @property
    def names(self) -> list[str]:
        from fedft.methods import trainable_parameters

        return list(trainable_parameters(self.model))

    @property
    def examples(self) -> int:
        return len(self.clients[self.cid])

    def local_update(self, start: State, rnd: int) -> Update:
        """Local training of this node's client from `start`, as the simulation's one-by-one runner does it, on the
        instruction the run's strategy gives (FedProx: its proximal term)."""
        from fedft.fl.client import TrainConfig
        from fedft.fl.runners import OneByOne, Pool
        from fedft.fl.strategies import STRATEGIES
        from fedft.fl.precision import resolve
        from fedft.methods import METHODS, trainable_parameters
        from fedft.tasks import TASKS

        fl = self.config.fl
        keep = METHODS.get(self.config.method.name, "method.name")(self.config.method).keep_fp32
        prec = resolve(fl.precision, next(self.model.parameters()).device, keep, _warn_once)  # this node's machine
        cfg = TrainConfig(fl.local_epochs, fl.batch_size, self.lr, fl.weight_decay, 0.0, fl.group_by_length,
                          prec.used, TASKS.get(self.task, "task.name")().loss, fl.optimizer, fl.momentum)
        pool = Pool(self.model, trainable_parameters(self.model), self.train, self.clients, cfg, fl.seed)
        ins = STRATEGIES.get(fl.strategy, "fl.strategy")(fl).configure_train(rnd, [self.cid], start)[0]
        return OneByOne(pool).train(rnd, [ins])[0]


_WARNED: set[str] = set()


def _warn_once(line: str) -> None:
    """A node's warning (bf16 emulated on its machine) once per process, not once per round."""
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, flush=True)


_PREPARED: dict[str, Node] = {}  # this process's prepared experiments (Flower's simulation reuses its processes)


@functools.cache
def _code() -> str:
    """A fingerprint of fedft's own source: a node prepared (and pickled) by other code is never reused, since
    its objects' classes may have changed (a stale TextExamples failed every client after an upgrade)."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def node(context: Context, cid: int | None = None) -> Node:
    """This node's client. The prepared experiment (the frozen base model with the method applied, the tokenised or
    decoded data and its partitions) is kept in this process, for the simulation runtime, whose workers serve many
    clients, and on the node's disk (under $FEDFT_CACHE/deploy, default ~/.cache/fedft), because a deployed
    SuperNode starts a fresh ClientApp process for every message. It does not depend on the partition id, so nodes
    that share a host share it."""
    import hashlib
    import os

    from fedft.models.dinov2_onnx import cache_root

    config, nc = run_config(context), context.node_config
    if int(nc.get("threads", 0)) > 0:  # several SuperNodes on one host: share its cores
        torch.set_num_threads(int(nc["threads"]))
    cid = client_id(config, nc) if cid is None else cid  # given: a simulated node told which client to train
    shared = sorted((k, v) for k, v in nc.items() if k not in ("partition-id", "num-partitions"))
    key = hashlib.sha256(json.dumps([str(context.run_config["fedft-config"]), shared, _code()], default=str).encode()
                         ).hexdigest()[:20]
    base = _PREPARED.get(key)
    path = cache_root() / "deploy" / f"node-{key}.pt"
    if base is None and path.is_file():
        try:
            base = torch.load(path, weights_only=False)  # written by this code on this node
        except Exception:  # a damaged file: prepare again
            path.unlink(missing_ok=True)
    if base is None:
        base = prepare_node(config, str(nc.get("data", "")))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        torch.save(base, tmp)
        os.replace(tmp, path)
    _PREPARED[key] = base
    own = base.clients[0 if nc.get("data") else cid]  # seeds depend on the client id, as in the simulation
    sizes = np.zeros(config.data.num_clients, dtype=np.int64)
    sizes[cid] = len(own)
    clients = Clients.by_size(own, sizes)  # this node's rows under its own id, every other client empty
    return dataclasses.replace(base, cid=cid, clients=clients)


def client_id(config: Config, nc) -> int:
    """The client this node is (its partition-id), checked against the run's data.num_clients."""
    if "partition-id" not in nc:
        raise UsageError("this SuperNode has no partition-id in its node config (fedft deploy supernode "
                         "--partition-id I)")
    cid, num_clients = int(nc["partition-id"]), config.data.num_clients
    if not 0 <= cid < num_clients:
        raise UsageError(f"partition-id = {cid}: the run has data.num_clients = {num_clients} "
                         f"(ids 0..{num_clients - 1})")
    if "num-partitions" in nc and int(nc["num-partitions"]) != num_clients:
        raise UsageError(f"num-partitions = {nc['num-partitions']} in this SuperNode's node config, but the run has "
                         f"data.num_clients = {num_clients}")
    return cid


def prepare_node(config: Config, own: str) -> Node:
    """The experiment as a node sees it: every partition of the run's data set, or (own = csv:PATH or
    imagefolder:PATH) the node's own data as its one client."""
    from fedft.api import prepare

    if own:  # this node's own data, all of it for training
        data = dataclasses.replace(config.data, name=own, num_clients=1, partition="iid", min_partition_size=1)
        exp = prepare(dataclasses.replace(config, data=data))
    else:
        exp = prepare(config)
    return Node(-1, config, exp.model, exp.train, exp.clients, exp.lr, exp.classes, exp.task.name)


def query(msg: Message, context: Context) -> Message:
    me = node(context)
    wanted = json.loads(str(msg.content["config"]["classes"]))
    if me.classes != wanted:
        raise UsageError(f"this node's data has classes {me.classes[:5]}..., the run's are {wanted[:5]}...: "
                         f"they must be the same, in the same order")
    cid = int(context.node_config["partition-id"])
    return Message(RecordDict({"config": ConfigRecord({"cid": cid, "examples": me.examples})}), reply_to=msg)


def _since_process_start() -> float:
    """Seconds since this ClientApp process started (Python start-up and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    told = bool(context.run_config.get("virtual-clients"))  # flower-sim: the message names the client
    me = node(context, int(msg.content["config"]["cid"]) if told else None)
    t_load = time.perf_counter() - t0
    if "fitins.config" in msg.content.config_records:  # SecAgg+: the legacy FitIns / FitRes layout
        import flwr.compat.common.recorddict_compat as compat
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

        ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        start = {n: torch.from_numpy(np.array(a)) for n, a in zip(me.names, parameters_to_ndarrays(ins.parameters))}
        update = me.local_update(start, int(ins.config["round"]))
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update.state[n].numpy() for n in me.names]),
                     update.num_examples, {"loss": float(update.loss)})
        return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
    state = msg.content["arrays"].to_torch_state_dict()
    start = {n: state[n] for n in me.names}
    t1 = time.perf_counter()
    update = me.local_update(start, int(msg.content["config"]["round"]))
    return Message(RecordDict({
        "arrays": ArrayRecord({n: update.state[n].detach().cpu().contiguous() for n in me.names}),
        "metrics": MetricRecord({"num-examples": update.num_examples,
                                 "loss": float(update.loss),
                                 # where a node's time goes: start-up and imports, loading the client, training
                                 "startup-s": _since_process_start() - (time.perf_counter() - t0),
                                 "load-s": t_load, "train-s": time.perf_counter() - t1}),
    }), reply_to=msg)


for _app in (client, client_secagg):
    _app.query()(query)
    _app.train()(train)
