"""fl.backend = "flower-sim": the experiment on Flower's simulation runtime (Ray) instead of fedft's in-process
engine. The ServerApp and ClientApp are fedft.deploy's own, so sampling, aggregation, DP, resume and the result files
are the same code as in `fedft run` and in a deployment; each client trains in a Ray actor with
deploy.sim_client_cpus cores, as many at once as the machine's cores allow.

fedft starts a private SuperLink in simulation mode (a free loopback port, a temporary FLWR_HOME), submits the run
with `flwr run`, streams its log, checks that Flower reports it `finished:completed`, and stops the SuperLink.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

from fedft.config import Config
from fedft.deploy import check_deployable, flower_env, require_flower
from fedft.errors import RunFailed, UsageError

FEDERATION = "fedft-sim"


def require_ray() -> None:
    require_flower()
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("fl.backend = 'flower-sim' needs Flower's simulation extra: pip install "
                         "'fedft[flower-sim]' (flwr[simulation]==1.41.0, which brings Ray)") from None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, wait: float = 60.0) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunFailed(f"Flower's simulation SuperLink exited with code {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RunFailed(f"Flower's simulation SuperLink did not answer within {wait:.0f} s; see {log}")


def _reason(log: Path) -> str:
    """fedft's own error line from the run's log, where the ServerApp or a ClientApp stopped on one."""
    found = [m.group(1) or m.group(2) for m in map(_OWN_ERROR.search, log.read_text(errors="replace").splitlines())
             if m]
    return f" ({found[-1].strip()})" if found else ""


# a UsageError, or deploy.app's RuntimeError when a simulated client failed
_OWN_ERROR = re.compile(r"UsageError: (.+)|RuntimeError: (round \d+: simulated client .+)")


def on_nodes(config: Config):
    """The precision line of a run whose clients train on Flower nodes: each resolves fl.precision itself."""
    from fedft.fl.precision import Precision

    asked = config.fl.precision
    return Precision(asked, "resolved on each node's own machine" if asked == "auto" else f"fl.precision = {asked}")


def simulate(config: Config, out: Path, log: Callable[[str], None] | None = None, resume: bool = False) -> None:
    """Run the experiment on Flower's simulation runtime; the results land in `out` as with `fedft run`."""
    from fedft.deploy.commands import _bin, app_dir, run_status, write_federation
    from fedft.driver import start_line

    require_ray()
    check_deployable(config)
    say = log or (lambda line: None)
    say(start_line(config, config.data.num_clients, on_nodes(config)) + ", on Flower's simulation runtime")
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="fedft-flower-sim-"))
    env = {**flower_env(), "FLWR_HOME": str(home), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
    port, link_log = _free_port(), out / "flower-superlink.log"
    with link_log.open("w") as fh:
        link = subprocess.Popen([_bin("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    app = run = None
    try:
        _wait_healthy(port, link, link_log)
        write_federation(FEDERATION, f"127.0.0.1:{port}", None, home=home)
        app = app_dir(config, out.resolve(), resume=resume, virtual=True)
        cpus = config.deploy.sim_client_cpus
        cmd = [_bin("flwr"), "run", str(app), FEDERATION, "--stream", "--federation-config",
               f"num-supernodes={config.data.num_clients} client-resources-num-cpus={cpus:g}"]
        run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with (out / "flower.log").open("a") as fh:
            for line in run.stdout:
                fh.write(line)
                say(line.rstrip("\n"))
        run.wait()
        run_id, status = run_status(FEDERATION, env)
        if run.returncode != 0 or status != "finished:completed":
            raise RunFailed(f"Flower's simulation run {run_id} ended {status}{_reason(out / 'flower.log')}; its log "
                            f"is in {out / 'flower.log'}")
    finally:
        stop_tree(link)
        if run is not None:  # `flwr run`, which streams the log (it ends with the SuperLink)
            stop_tree(run)
            run.stdout.close()
        shutil.rmtree(home, ignore_errors=True)
        if app is not None:
            shutil.rmtree(app, ignore_errors=True)


def stop_tree(proc: subprocess.Popen, wait: float = 15.0) -> None:
    """Stop a process and every process it started, wherever they went: Flower starts the simulation in its own
    process group and Ray its daemons in their own sessions, so the process group alone leaves them running.
    SIGTERM, then SIGKILL for what is left (some of Ray's agents ignore SIGTERM)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=wait)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=wait)
    proc.wait()
