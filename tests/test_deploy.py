"""fedft deploy: a real SuperLink and two SuperNodes on loopback with TLS (certificates made here), runs checked by
their Flower status and against `fedft run`; and the bad-input paths, each one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fedft
from fedft.cli import main
from fedft.config import load_config
from fedft.deploy import check_deployable, commands
from fedft.errors import UsageError

pytest.importorskip("flwr")

FEDFT = str(Path(sys.executable).parent / "fedft")
EXPERIMENT = """
[model]
name = "tiny-bert"
[data]
num_clients = 2
train_per_class = 20   # 300 glosses: each ClientApp process prepares its client in seconds
test_per_class = 10
[method]
name = "lora"
[fl]
rounds = 2
clients_per_round = 2
precision = "fp32"   # SecAgg+'s quantisation bound below is for fp32 training, on any processor
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def flower_env(tmp_path, monkeypatch):
    """A private FLWR_HOME and HOME, telemetry and runtime dependency installation off, short polls."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"FLWR_HOME": str(home / ".flwr"), "HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
           "FEDFT_CACHE": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **env}


@pytest.fixture
def federation(tmp_path, flower_env):
    """SuperLink + SuperNodes for partitions 0 and 1, with TLS; every process stopped by its PID at the end."""
    certs = tmp_path / "certs"
    assert main(["deploy", "certs", str(certs)]) == 0
    port = free_port()
    procs = []
    logs = []

    def start(*args: str) -> None:
        log = open(tmp_path / f"proc{len(procs)}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([FEDFT, "deploy", *args], env=flower_env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("superlink", "--certs", str(certs), "--host", "127.0.0.1", "--port", str(port))
        for i in range(2):
            start("supernode", "--superlink", f"127.0.0.1:{port}", "--certs", str(certs), "--partition-id", str(i),
                  "--num-partitions", "2", "--port", str(free_port()))
        yield {"address": f"127.0.0.1:{port}", "certs": certs, "procs": procs, "start": start}
    finally:
        stop(procs)
        for log in logs:
            log.close()


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop each process group (the Flower process and the helpers it started): SIGTERM, then SIGKILL."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def deploy_run(tmp_path, fed, env, config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDFT, "deploy", "run", str(config), "--superlink", fed["address"], "--certs",
                           str(fed["certs"]), "--out", str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=900)


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def test_deployed_run_equals_simulation_a_node_rejoins_and_secagg_within_quantisation(tmp_path, federation, flower_env):
    config = tmp_path / "exp.toml"
    config.write_text(EXPERIMENT)
    sim = tmp_path / "sim"
    assert main(["run", str(config), "--out", str(sim), "--quiet"]) == 0

    done = deploy_run(tmp_path, federation, flower_env, config, tmp_path / "fed")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout  # the run's Flower status, not only flwr's exit code
    res = json.loads((tmp_path / "fed" / "results.json").read_text())
    assert res["status"] == "completed" and len(res["rounds"]) == 2
    want, got = adapter(sim), adapter(tmp_path / "fed")
    assert set(want) == set(got)
    for k in want:  # the same clients, seeds and data: the same bits
        assert torch.equal(want[k], got[k]), k
    assert res["final"]["accuracy"] == json.loads((sim / "results.json").read_text())["final"]["accuracy"]

    # a client host crashes (SIGKILL) and its SuperNode rejoins; the SuperLink kept running: a second run on it,
    # now with SecAgg+
    os.killpg(federation["procs"][2].pid, signal.SIGKILL)
    federation["procs"][2].wait()
    federation["start"]("supernode", "--superlink", federation["address"], "--certs", str(federation["certs"]),
                        "--partition-id", "1", "--num-partitions", "2", "--port", str(free_port()))
    done = deploy_run(tmp_path, federation, flower_env, config, tmp_path / "secagg", "--set", "deploy.secagg=true")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    got = adapter(tmp_path / "secagg")
    # SecAgg+ quantises each client's weighted values to 2**22 levels over [-8, 8] (a step of 3.8e-6), and the
    # error compounds over two rounds: well within 1e-4, and not bit-equal
    diff = max((want[k] - got[k]).abs().max().item() for k in want)
    assert 0 < diff < 1e-4


def test_supernode_refuses_missing_data_and_silent_superlink(tmp_path, flower_env, capsys):
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:1", "--insecure", "--partition-id", "0",
                 "--data", f"csv:{tmp_path / 'nope.csv'}"]) == 2
    assert "is not a file" in capsys.readouterr().err
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="no SuperLink answers"):
        commands.probe_superlink(f"127.0.0.1:{port}", None, wait=1.0)
    assert time.monotonic() - t0 < 10
    assert main(["deploy", "supernode", "--superlink", "localhost", "--insecure", "--partition-id", "0"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:9", "--partition-id", "0"]) == 2
    assert "TLS is on by default" in capsys.readouterr().err


def test_certificate_that_does_not_match_is_named(tmp_path):
    ours, theirs = commands.make_certs(tmp_path / "ours", []), commands.make_certs(tmp_path / "theirs", [])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(theirs / commands.SERVER_CERT, theirs / commands.SERVER_KEY)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except ssl.SSLError:
                pass
            except OSError:  # the listening socket was closed: done
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        commands.probe_superlink(f"127.0.0.1:{port}", theirs)  # its own CA verifies it
        with pytest.raises(UsageError, match="does not verify"):
            commands.probe_superlink(f"127.0.0.1:{port}", ours)
    finally:
        srv.close()


def test_certs_cover_the_named_hosts_and_never_overwrite(tmp_path, capsys):
    from cryptography import x509

    out = commands.make_certs(tmp_path / "c", ["10.1.2.3", "link.example"])
    cert = x509.load_pem_x509_certificate((out / commands.SERVER_CERT).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.1.2.3"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.example"}
    assert oct((out / "server.key").stat().st_mode)[-3:] == "600"
    assert main(["deploy", "certs", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_node_config_checks_and_app_folder(tmp_path):
    assert commands.node_config(1, 4, None) == "partition-id=1 num-partitions=4"
    with pytest.raises(UsageError, match="0..3"):
        commands.node_config(4, 4, None)
    with pytest.raises(UsageError, match="give csv:PATH or hf:PATH or imagefolder:PATH or jsonl:PATH or parquet:PATH"):
        commands.node_config(0, None, "xlsx:/x")
    with pytest.raises(UsageError, match="is not a file"):
        commands.node_config(0, None, "parquet:/x")
    (tmp_path / "d.csv").write_text("text,label\na,x\n")
    assert commands.node_config(0, None, f"csv:{tmp_path / 'd.csv'}").endswith(f'data="csv:{tmp_path / "d.csv"}"')
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": "x"}\n')
    assert commands.node_config(0, None, f"jsonl:{tmp_path / 'd.jsonl'}").endswith(f'data="jsonl:{tmp_path / "d.jsonl"}"')
    config = load_config(None, ["deploy.secagg=true", "fl.rounds=3"])
    app = commands.app_dir(config, tmp_path / "out")
    meta = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert meta["components"]["clientapp"] == "fedft.deploy.app:client_secagg"
    assert json.loads(meta["config"]["fedft-config"]) == config.to_dict()
    assert meta["config"]["virtual-clients"] is False  # fedft deploy: each node is its own partition
    for secagg, virtual in ((True, False), (False, True)):  # SecAgg+ addresses each node as its own partition
        app = commands.app_dir(load_config(None, [f"deploy.secagg={str(secagg).lower()}"]), tmp_path / "o", virtual=True)
        assert tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"][
            "virtual-clients"] is virtual


def test_simulated_nodes_train_clients_in_node_id_order_without_a_query_each(monkeypatch):
    """flower-sim: client c goes to the c-th node id in order and its size is the server's own split's (no message
    to each of a hundred thousand nodes); more nodes than clients is fine, fewer is refused in one line."""
    from fedft.data.clients import Clients
    from fedft.deploy.app import virtual_nodes

    class Grid:
        def __init__(self, ids):
            self.ids = ids

        def get_node_ids(self):
            return self.ids

    clients = Clients.of([np.arange(3), np.arange(3, 4), np.arange(4, 9)])
    nodes, sizes = virtual_nodes(Grid([907, 12, 55, 4000]), clients)
    assert nodes == {0: 12, 1: 55, 2: 907} and sizes == {0: 3, 1: 1, 2: 5}
    with pytest.raises(UsageError, match="2 of data.num_clients = 3 simulated nodes registered within 0 s"):
        virtual_nodes(Grid([1, 2]), clients, wait=0)
    # a simulated node that does not reply has failed (or the runtime is stopping at a Ctrl-C): the round is not
    # kept as if the client had dropped out, which a checkpoint would then carry into the resumed run
    from types import SimpleNamespace

    import fedft.deploy.app as app
    from fedft.fl.messages import Instruction

    monkeypatch.setattr(app, "Message", lambda *a, **k: None)  # a Flower Message needs a running ServerApp
    runner = object.__new__(app.FlowerClients)
    runner.grid, runner.names, runner.timeout, runner.virtual = SimpleNamespace(send_and_receive=lambda m, timeout: []), \
        ["w"], None, True
    runner.cfg, runner.nodes = SimpleNamespace(secagg=False), {0: 12}
    with pytest.raises(RuntimeError, match="round 2: simulated client 0 failed"):
        runner._train(2, [Instruction(0, {"w": torch.zeros(2)})])
    runner.virtual = False  # fedft deploy: a real node that does not reply dropped out
    assert runner._train(2, [Instruction(0, {"w": torch.zeros(2)})]) == []


@pytest.mark.parametrize("sets, words", [
    (["fl.mode='local'"], "federated"),
    (["proxy.kind='fedot'"], "proxy.kind"),
    (["method.name='layers'"], "layers"),
    (["dp.mode='sample'", "dp.noise_multiplier=1.0"], "dp.mode = 'sample' runs on fedft's engine only"),
    (["deploy.secagg=true", "dp.mode='client'", "dp.noise_multiplier=1.0"], "SecAgg+"),
    (["deploy.secagg=true", "fl.clients_per_round=1"], ">= 2"),
])
def test_what_a_deployed_run_refuses(sets, words):
    with pytest.raises(UsageError, match=words):
        check_deployable(load_config(None, [s.replace("'", '"') for s in sets]))


def test_federation_is_added_without_losing_others(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    commands.write_federation("lab", "10.0.0.5:9092", None)
    data = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert data["default"] == "local" and data["local"]["address"] == ":local:"
    assert data["lab"] == {"address": "10.0.0.5:9092", "insecure": True}


def engine_on_one_thread(config: Path, out: Path) -> None:
    """`fedft run` on one thread, as each Ray actor of a flower-sim run trains (deploy.sim_client_cpus = 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)


def test_flower_sim_ctrl_c_stops_everything_and_resumes(tmp_path, flower_env):
    """fl.backend = "flower-sim" runs fedft's ServerApp and ClientApps on Flower's simulation runtime (Ray). Ctrl-C
    during the run stops the SuperLink, the simulation and Ray's processes (they live in their own process groups
    and sessions), and `fedft run --resume` finishes it. Each Ray actor has one core (deploy.sim_client_cpus = 1), so
    against the engine on one thread the result is the same to the bit, every round's record included."""
    pytest.importorskip("ray")
    import psutil

    config = tmp_path / "exp.toml"  # rounds of a few seconds each, so the stop lands mid-run
    config.write_text(EXPERIMENT.replace("rounds = 2", "rounds = 3\nlocal_epochs = 15").replace("num_clients = 2",
                                                                                               "num_clients = 4"))
    engine_on_one_thread(config, tmp_path / "engine")

    def ctrl_c_after_round_1(line):
        if line.lstrip().startswith("round   1/"):
            raise KeyboardInterrupt

    sim = tmp_path / "sim"
    with pytest.raises(KeyboardInterrupt):
        fedft.run(load_config(config, ['fl.backend="flower-sim"']), sim, log=ctrl_c_after_round_1)
    assert not psutil.Process().children(recursive=True)
    time.sleep(3)  # nothing goes on training in the background
    assert json.loads((sim / "results.json").read_text())["status"] != "completed"
    assert main(["run", "--quiet", "--resume", str(sim)]) == 0
    want, got = adapter(tmp_path / "engine"), adapter(sim)
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    rows = [json.loads((f / "results.json").read_text())["rounds"] for f in (tmp_path / "engine", sim)]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1]) and len(rows[1]) == 3
    assert "Starting Flower Simulation" in (sim / "flower.log").read_text()
    assert not psutil.Process().children(recursive=True)


@pytest.mark.parametrize("sets, words", [
    (['method.name="layers"'], "method.name = 'layers' runs on fedft's engine only"),
    (['fl.mode="local"'], "runs on fedft's engine only"),
    (["deploy.sim_client_cpus=0"], "sim_client_cpus"),
])
def test_flower_sim_refusals(tmp_path, sets, words, capsys):
    args = ["run", "--out", str(tmp_path / "r"), "--set", 'fl.backend="flower-sim"']
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_supernode_authentication(tmp_path, flower_env):
    """With `superlink --auth`, the SuperNode whose public key was registered connects; another is refused, with
    fedft's line naming the fix."""
    certs, port = tmp_path / "certs", free_port()
    assert main(["deploy", "certs", str(certs)]) == 0
    for name in ("a", "b"):
        assert main(["deploy", "node-key", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "node.key").stat().st_mode & 0o077 == 0
    procs = []
    try:
        procs.append(subprocess.Popen([FEDFT, "deploy", "superlink", "--certs", str(certs), "--host", "127.0.0.1",
                                       "--port", str(port), "--auth"], env=flower_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        done = subprocess.run([FEDFT, "deploy", "register", str(tmp_path / "a" / "node.pub"), "--superlink",
                               f"127.0.0.1:{port}", "--certs", str(certs)], env=flower_env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "registered" in done.stdout, done.stdout + done.stderr
        for name, pid in (("a", 0), ("b", 1)):
            procs.append(subprocess.Popen([FEDFT, "deploy", "supernode", "--superlink", f"127.0.0.1:{port}",
                                           "--certs", str(certs), "--partition-id", str(pid), "--port",
                                           str(free_port()), "--auth-key", str(tmp_path / name / "node.key")],
                                          env=flower_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          start_new_session=True))
        out, _ = procs[2].communicate(timeout=120)  # b: refused, and it stops
        assert procs[2].returncode != 0 and "is its public key registered" in out, out[-2000:]
        deadline, nodes = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            ls = subprocess.run([str(Path(FEDFT).parent / "flwr"), "supernode", "ls", "fedft", "--format", "json"],
                                env=flower_env, capture_output=True, text=True, timeout=60)
            nodes = [n for n in json.loads(ls.stdout).get("nodes", []) if n["status"] == "online"]
            if nodes:
                break
            time.sleep(1)
        assert len(nodes) == 1 and procs[1].poll() is None  # a: in, and still running
    finally:
        stop(procs)


def test_node_keys_are_checked(tmp_path, capsys):
    assert main(["deploy", "node-key", str(tmp_path / "k")]) == 0
    assert main(["deploy", "node-key", str(tmp_path / "k")]) == 2  # never overwritten
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "bad.key").write_text("not a key")
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:1", "--insecure", "--partition-id", "0",
                 "--auth-key", str(tmp_path / "bad.key")]) == 2
    assert "is not an OpenSSH private key" in capsys.readouterr().err
    assert main(["deploy", "register", str(tmp_path / "k" / "node.key"), "--superlink", "127.0.0.1:1",
                 "--insecure"]) == 2
    assert "is not an OpenSSH public key" in capsys.readouterr().err


INSTRUCT = """
[model]
name = "tiny-llama"
max_length = 48
[data]
name = "wordnet-instruct"
num_clients = 2
partition = "iid"
train_per_class = 2
test_per_class = 1
[fl]
rounds = 2
clients_per_round = 2
batch_size = 8
lr = 0.01
precision = "fp32"
[task]
generate = 2
max_new_tokens = 4
"""


def test_flower_sim_trains_the_instruct_task_as_the_engine_does(tmp_path, flower_env):
    """The ClientApps train with the run's own task (a causal LM's response-token loss, not the classifier's):
    on Flower's simulation runtime the instruct run is bit-identical to the engine's on one thread."""
    pytest.importorskip("ray")
    config = tmp_path / "instruct.toml"
    config.write_text(INSTRUCT)
    engine_on_one_thread(config, tmp_path / "engine")
    assert main(["run", str(config), "--set", 'fl.backend="flower-sim"', "--out", str(tmp_path / "sim"),
                 "--quiet"]) == 0
    want, got = adapter(tmp_path / "engine"), adapter(tmp_path / "sim")
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    rows = [json.loads((f / "results.json").read_text())["rounds"] for f in (tmp_path / "engine", tmp_path / "sim")]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1]) and rows[1][-1]["rougeL"] is not None
