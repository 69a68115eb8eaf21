"""The instruct task's cost on SmolLM2-135M: fedft's client step against plain peft's on the same batch, and what
many simulated clients add to peak memory over the one shared base model.

    .venv/bin/python benchmarks/llm.py [--steps 10] [--skip-memory] [--clients 100] [--config configs/llm-wordnet.toml]

1. Memory. Peak resident memory (ru_maxrss, which only grows) after one federated round of 10 clients (one batch
   each: the training step's own working memory is in it), then after a round of --clients clients on the same
   shared model: the growth is what the extra clients cost (their updates, held until aggregation), against
   (--clients - 10) x the LoRA state's size; and the resident memory (VmRSS) at the moment the strategy aggregates,
   when every update is held: its growth is what holding the states costs, without the training step's working
   memory (which differs between rounds with the longest batch a round happens to train). Then both rounds once
   more, warm: the first pass grows the process's working memory for every batch shape it meets for the first time
   (a round of 100 clients meets more), which is not the states' cost; the second pass shows what holding them costs.
2. Step time. One batch (fl.batch_size rows of the config's training data, as fedft batches them). fedft: its
   train_batches on the run's model (peft LoRA inside fedft's wrapper, its loss counting response tokens only).
   plain: AutoModelForCausalLM.from_pretrained(BASE) + peft get_peft_model with the same LoraConfig, AdamW at the
   same lr, the Hugging Face loss (`labels=`), the same batch. Steps interleaved (fedft, plain, fedft, ...) after
   one warm-up each; prints the median seconds of each and fedft/plain.
Prints the CPU; run it alone (nothing else on the cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time

import numpy as np
import torch


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/llm-wordnet.toml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--skip-memory", action="store_true", help="only the step time")
    args = ap.parse_args()

    from fedft.api import assemble, prepare
    from fedft.config import load_config
    from fedft.fl.precision import cpu_name

    torch.manual_seed(0)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    config = load_config(args.config, [f"data.num_clients={args.clients}", "fl.clients_per_round=10",
                                       'data.partition="iid"', "fl.rounds=1", "task.generate=0",
                                       "data.train_per_class=8"])  # about 8 rows, one batch, a client
    exp = prepare(config)
    built = rss_mb()
    state_mb = sum(p.numel() * 4 for p in exp.params.values()) / 2**20  # MiB, as the RSS figures (KiB / 1024)
    print(f"built: peak RSS {built:.0f} MiB; LoRA state {state_mb:.2f} MiB ({sum(p.numel() for p in exp.params.values()):,} "
          f"parameters)")

    b = assemble(exp)  # first the memory (ru_maxrss only grows: before the plain model is loaded)
    if not args.skip_memory:
        memory(b, exp, config, args.clients, state_mb)
    step_time(b, exp, config, args.steps)


def current_mb() -> float:
    """Resident memory now (VmRSS), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def round_at_aggregation(fed) -> tuple[object, float]:
    """One round of `fed`; also the resident memory when the strategy aggregates (every update held)."""
    from fedft.fl.loop import federated

    seen, aggregate = [], fed.strategy.aggregate

    def measured(*args, **kwargs):
        seen.append(current_mb())
        return aggregate(*args, **kwargs)

    fed.strategy.aggregate = measured
    return next(federated(fed)), seen[0]


def memory(b, exp, config, clients: int, state_mb: float) -> None:
    from fedft.api import assemble

    row, held_small = round_at_aggregation(b.fed)
    small = rss_mb()
    print(f"one round of {row.sampled} clients: peak RSS {small:.0f} MiB; {held_small:.0f} MiB resident at aggregation")
    exp.config = dataclasses.replace(config, fl=dataclasses.replace(config.fl, clients_per_round=clients))
    row, held_big = round_at_aggregation(assemble(exp).fed)
    big = rss_mb()
    extra = row.sampled - 10
    print(f"one round of {row.sampled} clients: peak RSS {big:.0f} MiB: +{big - small:.0f} MiB for {extra} more clients, "
          f"whose LoRA states weigh {extra * state_mb:.0f} MiB ({(big - small) / (extra * state_mb):.2f}x); resident at "
          f"aggregation {held_big:.0f} MiB: +{held_big - held_small:.0f} MiB "
          f"({(held_big - held_small) / (extra * state_mb):.2f}x)")
    # warm: the process has now trained every batch shape of both rounds once; the same two rounds again
    exp.config = config
    _, warm_small = round_at_aggregation(assemble(exp).fed)
    exp.config = dataclasses.replace(config, fl=dataclasses.replace(config.fl, clients_per_round=clients))
    _, warm_big = round_at_aggregation(assemble(exp).fed)
    print(f"the same rounds again (warm): resident at aggregation {warm_small:.0f} MiB with 10 clients, {warm_big:.0f} "
          f"MiB with {row.sampled}: +{warm_big - warm_small:.0f} MiB ({(warm_big - warm_small) / (extra * state_mb):.2f}x "
          f"their states)")


def step_time(b, exp, config, steps: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fedft.fl.client import make_optimizer, train_batches

    idx = np.arange(config.fl.batch_size)
    inputs, targets = exp.train.batch(idx)
    print(f"batch: {tuple(inputs['input_ids'].shape)} tokens, {int((targets != -100).sum())} response tokens")
    opt = make_optimizer(exp.params, b.pool.cfg)

    plain = AutoModelForCausalLM.from_pretrained(exp.model_source, dtype="float32")
    plain = get_peft_model(plain, LoraConfig(r=config.method.rank, lora_alpha=config.method.alpha,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    plain.train()
    plain_opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=exp.lr)

    def fedft_step():
        train_batches(exp.model, exp.params, exp.train, [idx], opt, None, "fp32", exp.task.loss)

    def plain_step():
        out = plain(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=targets)
        plain_opt.zero_grad(set_to_none=True)
        out.loss.backward()
        plain_opt.step()

    times = {"fedft": [], "plain": []}
    fedft_step(), plain_step()  # warm-up
    for _ in range(steps):
        for name, fn in (("fedft", fedft_step), ("plain", plain_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    f, p = statistics.median(times["fedft"]), statistics.median(times["plain"])
    print(f"step: fedft {f:.3f} s, plain peft {p:.3f} s (median of {steps}); fedft/plain = {f / p:.3f}")


if __name__ == "__main__":
    main()
