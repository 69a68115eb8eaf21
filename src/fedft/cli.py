"""The `fedft` command: thin, it parses arguments, builds a Config and calls the library."""
from __future__ import annotations

import argparse
import signal
import sys

from fedft.errors import RunFailed, UsageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedft", description="Federated fine-tuning of pre-trained transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run an experiment (no CONFIG: the default experiment)")
    _config_args(p)
    p.add_argument("--out", help="output folder (default runs/<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-round lines")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last finished round "
                   "(its own config; give nothing else)")

    p = sub.add_parser("methods", help="each tuning method's trainable parameters and share of the model")
    _config_args(p)
    p.add_argument("--model", help="model name or path (same as --set model.name=...)")

    p = sub.add_parser("partition", help="print each client's number of examples and label counts")
    _config_args(p)

    sub.add_parser("config", help="list every config key with its default and meaning")

    p = sub.add_parser("sweep", help="run a grid of experiments (resumable), then write summary tables and plots")
    _config_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                   help="values to sweep (repeatable; adds to or replaces the file's [sweep] grid)")
    p.add_argument("--repeat", type=int, help="runs per grid point, with fl.seed, fl.seed+1, ... (default 1)")
    p.add_argument("--out", help="sweep folder (default sweeps/<timestamp>); rerun with the same to resume")
    p.add_argument("--workers", type=int, default=1, help="cells run at a time, each with cores / workers threads "
                   "(default 1; on 2 cores, 2 workers finish a study of small models about 1.26x sooner)")

    p = sub.add_parser("generate", help="an instruct run's greedy answer to a prompt (plain transformers + peft)")
    p.add_argument("run", help="a finished instruct run folder")
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default 64)")

    p = sub.add_parser("export", help="an instruct run as one model folder: --merged DIR (adapter merged in)")
    p.add_argument("run", help="a finished instruct run folder")
    p.add_argument("--merged", required=True, metavar="DIR", help="new folder AutoModelForCausalLM alone loads")

    p = sub.add_parser("export-base", help="write the built-in decoder (smollm2-135m, converted from its package) "
                       "as a plain Hugging Face folder: the BASE its adapters load onto")
    p.add_argument("dir", help="new folder")
    p.add_argument("--model", default="smollm2-135m", help="the built-in model (default smollm2-135m)")

    p = sub.add_parser("report", help="summary tables and plots from finished runs (run or sweep folders)")
    p.add_argument("runs", nargs="+", help="run folders, or folders of runs")
    p.add_argument("--out", help="where to write (default: the one folder given)")

    p = sub.add_parser("proxy", help="FedPFT sub-models: `fedft proxy build` makes one (see proxy.* in `fedft config`)")
    proxy = p.add_subparsers(dest="proxy_command", required=True)
    p = proxy.add_parser("build", help="build a sub-model of a model (compressed FFNs, distilled), save it as a folder")
    _config_args(p)
    p.add_argument("--model", help="the full model (same as --set model.name=...; default minilm)")
    p.add_argument("--kind", choices=("fedpft", "fedot"), default=None,
                   help="fedpft: compress the FFNs by saliency and distil (default); fedot: drop layers")
    p.add_argument("--keep-layers", metavar="I,J,...", help="layers kept whole (default 0,-1: the first and last)")
    p.add_argument("--ffn-neurons", type=int, metavar="K", help="FFN neurons kept in the other layers "
                   "(default a quarter of the FFN width)")
    p.add_argument("--drop-layers", metavar="I,J,...", help="fedot: layers removed (default every second other one)")
    p.add_argument("--distill-data", help="unlabelled data for the alignment (default auto)")
    p.add_argument("--distill-steps", type=int, metavar="N", help="layer-level distillation steps (default 200)")
    p.add_argument("--out", help="folder to write (default proxies/<model>-<kind>-k<K>)")

    p = sub.add_parser("deploy", help="run across machines on Flower: certificates, SuperLink, SuperNodes, runs")
    deploy = p.add_subparsers(dest="deploy_command", required=True)
    p = deploy.add_parser("certs", help="make a local CA and a SuperLink certificate in DIR")
    p.add_argument("dir", help="new folder for ca.crt, ca.key, server.pem, server.key")
    p.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                   help="the SuperLink's name or IP as clients reach it (repeatable; localhost and 127.0.0.1 always)")
    p = deploy.add_parser("node-key", help="make a SuperNode's key pair in DIR (node.key stays on the node; "
                          "node.pub is registered with the SuperLink)")
    p.add_argument("dir", help="new folder for node.key and node.pub")
    p = deploy.add_parser("superlink", help="start the SuperLink (the server side; the run's results are written here)")
    _tls_args(p)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9092, help="port (default 9092)")
    p.add_argument("--database", help="SQLite file for the SuperLink's state (default in memory)")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication: only SuperNodes whose public key "
                   "was registered (fedft deploy register) may connect")
    p = deploy.add_parser("register", help="register a SuperNode's public key with a SuperLink started with --auth")
    p.add_argument("key", help="the node's node.pub (from fedft deploy node-key)")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    _tls_args(p)
    p = deploy.add_parser("supernode", help="start a SuperNode: one client, its partition or its own data")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    _tls_args(p)
    p.add_argument("--partition-id", type=int, required=True, help="which client this node is (0..num_clients-1)")
    p.add_argument("--num-partitions", type=int, help="data.num_clients of the runs it serves (checked)")
    p.add_argument("--data", metavar="csv:PATH|imagefolder:PATH",
                   help="this node's own training data (default: partition partition-id of the run's data.name)")
    p.add_argument("--port", type=int, default=9094, help="local port for the node's ClientApps (default 9094; "
                   "one per SuperNode on a host)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for training (default all cores; with "
                   "several SuperNodes on one host, cores / nodes: oversubscribed cores train many times slower)")
    p.add_argument("--auth-key", metavar="FILE", help="this node's node.key, for a SuperLink with --auth")
    p = deploy.add_parser("run", help="submit an experiment to a SuperLink and wait for it")
    _config_args(p)
    p.add_argument("--superlink", metavar="HOST:PORT", help="the SuperLink (saved as a federation in $FLWR_HOME)")
    p.add_argument("--federation", metavar="NAME", help="a [superlink.NAME] of $FLWR_HOME/config.toml "
                   "(with --superlink: the name to save it under; default fedft)")
    _tls_args(p)
    p.add_argument("--out", help="results folder on the SuperLink's host (default runs/deploy-<timestamp>)")

    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # A command started in the background by a non-interactive shell (`nohup fedft sweep ... &`) inherits SIGINT
    # ignored, and `kill -INT` would do nothing: take it back, so it stops the run as Ctrl-C does.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"fedft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "sweep":
            print("fedft: interrupted; finished runs are kept: run the same fedft sweep command again to go on",
                  file=sys.stderr)
        else:
            print("fedft: interrupted; the rounds finished so far are in results.json (a federated run continues "
                  "with fedft run --resume RUN_DIR)", file=sys.stderr)
        return 130
    except RunFailed as e:
        print(f"fedft: {e}", file=sys.stderr)
        return 1


def _tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--certs", metavar="DIR", help="folder from `fedft deploy certs` (TLS, the default)")
    p.add_argument("--insecure", action="store_true", help="no TLS (only on a trusted network)")


def cmd_deploy(args: argparse.Namespace) -> int:
    from fedft.deploy import commands

    if args.deploy_command == "certs":
        out = commands.make_certs(args.dir, args.host)
        print(f"wrote {out}/ca.crt (give it to every SuperNode host) and server.pem/server.key (the SuperLink's)")
        return 0
    if getattr(args, "certs", None) and args.insecure:
        raise UsageError("give --certs DIR or --insecure, not both")
    if args.deploy_command == "node-key":
        out = commands.make_node_key(args.dir)
        print(f"wrote {out}/node.key (keep it on the SuperNode: --auth-key) and {out}/node.pub (register it: "
              f"fedft deploy register)")
        return 0
    if args.deploy_command == "superlink":
        return commands.superlink(args.certs, args.insecure, args.host, args.port, args.database, args.auth)
    if args.deploy_command == "register":
        return commands.register(args.key, args.superlink, args.certs, args.insecure)
    if args.deploy_command == "supernode":
        return commands.supernode(args.superlink, args.certs, args.insecure, args.partition_id, args.num_partitions,
                                  args.data, args.port, args.threads, args.auth_key)
    return commands.deploy_run(_load(args), args.federation, args.superlink, args.certs, args.insecure, args.out)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="experiment file (TOML)")
    p.add_argument("--config", dest="config_opt", metavar="CONFIG", help="experiment file (TOML)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set fl.rounds=5")


def _load(args: argparse.Namespace, extra: list[str] = (), check: bool = True):
    from fedft.config import load_config

    if args.config and args.config_opt:
        raise UsageError("give the config file once (positional or --config)")
    return load_config(args.config or args.config_opt, [*args.set, *extra], check=check)


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fedft.api import resume_config, run

    if args.resume and (args.config or args.config_opt or args.set or args.out):
        raise UsageError("--resume RUN_DIR continues that run with its own config and folder: give no config, "
                         "--set or --out with it")
    config = resume_config(args.resume) if args.resume else _load(args)
    log = None if args.quiet else tqdm.write
    result = run(config, args.resume or args.out, progress=not args.quiet, log=log, resume=bool(args.resume))
    f = result.final
    score = (f"final accuracy {f['accuracy']:.4f}" if f.get("accuracy") is not None else  # instruct: its own
             f"final held-out loss {f['loss']:.4f}, ROUGE-L {f.get('rougeL') or 0:.4f}")
    print(f"{score}; {f['bytes_total'] / 1e6:.2f} MB sent; "
          f"{f['trainable_params']:,} of {f['total_params']:,} parameters trained; results in {result.out_dir}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from fedft.api import prepare
    from fedft.fl import comm
    from fedft.methods import METHODS
    from fedft.methods.base import count_parameters

    config = _load(args, [f"model.name={_toml_str(args.model)}"] if args.model else [])
    if not any(item.split("=", 1)[0].strip() == "data.name" for item in args.set) and not (args.config or
                                                                                           args.config_opt):
        from fedft.models import load_backbone

        if load_backbone(config.model).modality == "image":  # an image model: the built-in image data set
            config.data.name = "fashion-mnist" if config.data.name == "wordnet-nouns" else config.data.name
    # the table depends on the model and the classes only: one client, so no split of the data can fail
    config.data.num_clients, config.data.partition, config.fl.clients_per_round = 1, "iid", 1
    config.fl.min_clients = min(config.fl.min_clients, 1)
    header = False
    for name in METHODS.names():
        config.method.name = name
        exp = prepare(config)  # the model exactly as a run builds it
        if not header:
            print(f"model {config.model.name}, {len(exp.classes)} classes ({config.data.name}), "
                  f"payload at {config.comm.dtype}")
            print(f"{'method':<8} {'trainable':>12} {'total':>12} {'share':>8} {'MB/client/round':>16}")
            header = True
        n, total = sum(p.numel() for p in exp.params.values()), count_parameters(exp.model)
        payload = len(comm.encode({k: p.detach() for k, p in exp.params.items()}, config.comm.dtype))
        print(f"{name:<8} {n:>12,} {total:>12,} {100 * n / total:>7.3f}% {payload / 1e6:>16.4f}")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedft.data import load_data
    from fedft.data.partition import label_counts, partition

    config = _load(args, check=False)  # a partition uses [data] and fl.seed only: no fl.clients_per_round check
    data = load_data(config.data)
    train = data.train
    clients = partition(train.labels, config.data, config.fl.seed, data.groups, data.group_names)
    counts = label_counts(clients, train.labels, len(train.classes))
    held = sum(len(c) for c in clients)
    capped = "" if held == len(train.labels) else (
        f" ({held} held by the clients, data.shots = {config.data.shots})" if config.data.shots else
        f" ({held} held by the {len(clients)} of {len(data.group_names)} natural clients sampled)")
    print(f"{config.data.name}: {len(train.labels)} training examples{capped}, {len(train.classes)} classes, "
          f"{len(clients)} clients, partition {config.data.partition}")
    print("classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(train.classes)))
    if data.report:
        dropped = ", ".join(f"{n} {why}" for why, n in data.report["dropped"].items()) or "none"
        print(f"rows: {data.report['rows_read']} read, {data.report['rows_used']} used, dropped: {dropped}")
    width = max((len(n) for n in data.group_names), default=4)
    for cid, (row, idx) in enumerate(zip(counts, clients)):
        name = f" {data.group_names[data.groups[idx[0]]]:<{width}}" if data.groups is not None and len(idx) else ""
        print(f"client {cid:>4}{name}: {int(row.sum()):>6} examples  labels " + " ".join(f"{int(v)}" for v in row))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from fedft.config import help_lines

    print("\n".join(help_lines()))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from tqdm import tqdm

    from fedft import driver
    from fedft.summary import load_finished, write_summary
    from fedft.sweep import cells, parse_grid, read_sweep, run_sweep, run_sweep_parallel

    if args.config and args.config_opt:
        raise UsageError("give the config file once (positional or --config)")
    path = args.config or args.config_opt
    grid, repeat, variants = read_sweep(path)
    grid.update(parse_grid(args.grid))
    if not grid and not variants:
        raise UsageError("nothing to sweep: give --grid section.key=v1,v2 or a [sweep] grid or variants in the config "
                         "file")
    todo = cells(path, args.set, grid, repeat if args.repeat is None else args.repeat, variants)
    out = Path(args.out) if args.out else Path("sweeps") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file, not a folder")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1 (cells run at a time)")
    dirs = []
    try:
        if args.workers == 1:
            dirs = run_sweep(todo, out, lambda config, d: driver.run(config, d, progress=True), log=tqdm.write)
        else:
            dirs = run_sweep_parallel(todo, out, args.workers, log=print)
    finally:  # the summary of what finished, whatever ended the sweep: a second Ctrl-C waits until it is written
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _drop_half_imported()
            done = load_finished([d for d in (dirs or [out / c.name for c in todo]) if (d / "results.json").exists()])
            if done:
                written = write_summary(out, done)
                print(f"{len(done)} of {len(todo)} runs finished; wrote {', '.join(written)} in {out}")
        finally:
            signal.signal(signal.SIGINT, previous)
    return 0


def _drop_half_imported() -> None:
    """A Ctrl-C that lands while a module is being imported (matplotlib, during a run's start-up) leaves it half
    initialised in sys.modules, and the next import of it fails: forget such modules, so they load afresh."""
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            del sys.modules[name]


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedft.summary import find_runs, load_finished, write_summary

    if args.out is None and len(args.runs) != 1:
        raise UsageError("several folders given: say where to write with --out DIR")
    out = Path(args.out or args.runs[0])
    done = load_finished(find_runs([Path(r) for r in args.runs]))
    written = write_summary(out, done)
    print(f"{len(done)} finished runs; wrote {', '.join(written)} in {out}")
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from tqdm import tqdm

    from fedft.proxy import build

    if args.ffn_neurons is not None and args.ffn_neurons < 1:
        raise UsageError(f"--ffn-neurons {args.ffn_neurons}: must be between 1 and the FFN width")
    extra = [f"proxy.kind={_toml_str(args.kind or 'fedpft')}"]
    for flag, key in (("keep_layers", "keep_layers"), ("drop_layers", "drop_layers")):
        value = getattr(args, flag)
        if value is not None:
            items = [v.strip() for v in value.split(",") if v.strip()]
            if not items or not all(re.fullmatch(r"-?\d+", v) for v in items):
                raise UsageError(f"--{flag.replace('_', '-')} {value!r}: must be layer numbers, e.g. 0,11")
            extra.append(f"proxy.{key}=[{','.join(items)}]")
    if args.ffn_neurons is not None:
        extra.append(f"proxy.ffn_neurons={args.ffn_neurons}")
    if args.distill_data is not None:
        extra.append(f"proxy.distill_data={_toml_str(args.distill_data)}")
    if args.distill_steps is not None:
        extra.append(f"proxy.distill_steps={args.distill_steps}")
    if args.model:
        extra.append(f"model.name={_toml_str(args.model)}")
    config = _load(args, extra)
    k = config.proxy.ffn_neurons or "auto"
    out = Path(args.out or Path("proxies") / f"{Path(config.model.name).name}-{config.proxy.kind}-k{k}")
    folder, info = build(config, out, log=tqdm.write)
    print(f"transformer layers: full model {info.full_params:,} parameters, sub-model {info.sub_params:,} "
          f"({100 * info.sub_params / info.full_params:.1f}%); "
          + (f"FFNs of layers {sorted(info.neurons)} cut to {len(next(iter(info.neurons.values())))} of "
             f"{info.ffn_width} neurons" if info.neurons else f"kept layers {info.layer_map}"))
    print(f"saved to {folder}; use it with --set proxy.path={_toml_str(str(folder))} --set proxy.kind={info.kind}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from fedft.tasks.lm_files import generate

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    print(generate(args.run, args.prompt, args.max_new_tokens))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fedft.tasks.lm_files import export_merged

    print(f"merged model in {export_merged(args.run, args.merged)}")
    return 0


def cmd_export_base(args: argparse.Namespace) -> int:
    from fedft.tasks.lm_files import export_base

    print(f"base model in {export_base(args.model, args.dir)}")
    return 0


COMMANDS = {"generate": cmd_generate, "export": cmd_export, "export-base": cmd_export_base, "proxy": cmd_proxy, "deploy": cmd_deploy, "run": cmd_run, "methods": cmd_methods, "partition": cmd_partition, "config": cmd_config,
            "sweep": cmd_sweep, "report": cmd_report}


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
