"""FedPFT / FedOT during the rounds: the bytes of re-aligned FFNs owed to sampled clients, the neuron-level
alignment after aggregation (from the activity statistics the returned clients report), and the evaluation that
plugs the aggregated parameters into the full model."""
from __future__ import annotations

import time

from fedft.fl.client import load_state
from fedft.fl.hooks import Hook
from fedft.fl.parts import part
from fedft.proxy import ProxyRun


class ProxyHook(Hook):
    order = 0  # before availability: every sampled client is sent the latest FFNs

    def __init__(self, proxy: ProxyRun, pool, rounds: int) -> None:
        self.proxy, self.pool, self.rounds = proxy, pool, rounds

    def configure(self, rnd, instructions, log):
        log.bytes_down += self.proxy.owed([i.cid for i in instructions])
        return instructions

    def aggregated(self, rnd, state, updates, aggregated, log):
        """Clients report their sub-FFNs' activity (measured with their trained state); the server re-aligns.
        Not after the last round: no client would train on what it re-aligns, and the full model is scored
        without it."""
        p = self.pool
        if not (self.proxy.due(rnd) and updates and rnd < self.rounds):
            return
        t0 = time.perf_counter()
        stats = self.proxy.gather(p.model, p.params, updates, [p.clients[u.cid] for u in updates], p.data,
                                  p.cfg.batch_size)
        measured = time.perf_counter() - t0
        log.bytes_up += stats.nbytes() * len(updates)
        load_state(p.params, state)  # gathering left the last client's state loaded
        if aggregated:  # against the full model with the new global plugged in
            self.proxy.plug(p.params)
            self.proxy.align(stats, rnd)["stats_seconds"] = round(measured, 2)

    def evaluate(self, task, precision: str, profiles=None):
        """Row fields: the full model's accuracy and loss (parameters plugged in; its personal score where the task
        has one), and the sub-model's own."""
        p = self.pool
        self.proxy.plug(p.params)
        full = task.evaluate(self.proxy.full, self.proxy.test, precision=precision, profiles=profiles)
        sub = task.evaluate(p.model, self.proxy.test, precision=precision)
        return {**full, "proxy_accuracy": sub["accuracy"], "proxy_loss": sub["loss"]}

    def describe(self) -> dict:
        from fedft.methods.base import count_parameters

        info = self.proxy.info
        return {"proxy": {
            "kind": info.kind, "layer_map": info.layer_map, "compressed_layers": sorted(info.neurons),
            "ffn_neurons": len(next(iter(info.neurons.values()))) if info.neurons else info.ffn_width,
            "ffn_width": info.ffn_width, "full_layer_params": info.full_params, "sub_layer_params": info.sub_params,
            "client_model_params": count_parameters(self.pool.model),
            "full_model_params": count_parameters(self.proxy.full), "distill": info.distill,
            "server_data": info.server_data, "alignments": self.proxy.alignments}}

    def finish(self, out_dir, rounds):
        """The sub-model's last accuracy, and what the neuron-level alignments cost: the server's distillation
        steps and seconds, and the seconds the clients spent measuring the statistics."""
        done = self.proxy.alignments
        return {"proxy_accuracy": [r for r in rounds if r["accuracy"] is not None][-1]["proxy_accuracy"],
                "alignment_steps": sum(a["steps"] for a in done),
                "alignment_seconds": round(sum(a["seconds"] + a.get("stats_seconds", 0.0) for a in done), 2)}

    def state(self) -> dict:
        return {"proxy": self.proxy.state()}

    def restore(self, state: dict) -> None:
        self.proxy.restore(state["proxy"])


@part(5)
def proxy_run(b) -> None:
    """proxy.kind = fedpft | fedot (the experiment holds a ProxyRun): its hook, and the full model's evaluation."""
    from fedft.methods.base import count_parameters

    if b.exp.proxy is None:
        return
    b.exp.proxy.precision = b.pool.cfg.precision
    hook = ProxyHook(b.exp.proxy, b.pool, b.exp.config.fl.rounds)
    b.fed.hooks.append(hook)
    b.fed.evaluate = lambda cid=None: hook.evaluate(b.exp.task, b.pool.cfg.precision, b.profiles)
    b.cacheable = False  # the full model is scored on raw inputs
    b.final["full_model_params"] = count_parameters(b.exp.proxy.full)
