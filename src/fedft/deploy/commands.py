"""`fedft deploy certs | superlink | supernode | run`: one command per step of a Flower deployment.

Each checks its input first (one clear line and exit 2 on bad input, before any Flower process starts), then runs
the Flower process with telemetry, update checks and runtime dependency installation off.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from fedft.config import Config
from fedft.deploy import check_deployable, flower_env, require_flower
from fedft.errors import UsageError
from fedft.folders import write_folder

CA, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


# ---------------------------------------------------------------- certificates


def make_certs(out: str | Path, hosts: list[str], days: int = 365) -> Path:
    """A local CA and a SuperLink certificate for `hosts` (names or IPs; localhost and 127.0.0.1 always), written to
    `out` (ca.crt, ca.key, server.pem, server.key); refuses to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} exists and is not empty; choose a new folder for the certificates")
    names = list(dict.fromkeys(["localhost", "127.0.0.1", *hosts]))
    sans = []
    for h in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, key, signer, extensions):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=days)))
        for ext, critical in extensions:
            b = b.add_extension(ext, critical=critical)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedft local CA")])
    ca = cert(ca_name, ca_name, ca_key, ca_key, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), ca_name, key, ca_key,
                  [(x509.SubjectAlternativeName(sans), False), (x509.BasicConstraints(ca=False, path_length=None), True)])
    pem = serialization.Encoding.PEM

    def save(tmp: Path) -> None:
        for name, k in (("ca.key", ca_key), (SERVER_KEY, key)):
            (tmp / name).write_bytes(k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
            (tmp / name).chmod(0o600)
        (tmp / CA).write_bytes(ca.public_bytes(pem))
        (tmp / SERVER_CERT).write_bytes(server.public_bytes(pem))

    return write_folder(out, save, mode=0o700)  # an empty `out` is replaced (rename's rule)


def make_node_key(out: str | Path) -> Path:
    """A SuperNode's key pair for Flower's SuperNode authentication: an EC P-384 key in OpenSSH format, node.key
    (private, mode 600) and node.pub; refuses to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} exists and is not empty; choose a new folder for the node's key")
    key = ec.generate_private_key(ec.SECP384R1())

    def save(tmp: Path) -> None:
        (tmp / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.OpenSSH,
                                                         serialization.NoEncryption()))
        (tmp / "node.key").chmod(0o600)
        (tmp / "node.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                     serialization.PublicFormat.OpenSSH) + b"\n")

    return write_folder(out, save, mode=0o700)  # an empty `out` is replaced (rename's rule)


def _node_key(path: str, private: bool) -> Path:
    """Check a node key file before Flower reads it (Flower's own message for a bad one is an exit code)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{path!r}: no such key file (make one with `fedft deploy node-key DIR`)")
    try:
        key = (serialization.load_ssh_private_key(p.read_bytes(), None) if private
               else serialization.load_ssh_public_key(p.read_bytes()))
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise UsageError(f"{path!r} is not an OpenSSH {'private' if private else 'public'} key ({e}); use "
                         f"{'node.key' if private else 'node.pub'} from `fedft deploy node-key DIR`") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise UsageError(f"{path!r}: Flower's SuperNode authentication needs an elliptic-curve (NIST) key; make "
                         f"one with `fedft deploy node-key DIR`")
    return p.resolve()


# ---------------------------------------------------------------- checks before a Flower process starts


def _cert_files(certs: str | None, insecure: bool, need: tuple[str, ...]) -> Path | None:
    if insecure:
        return None
    if not certs:
        raise UsageError("TLS is on by default: give --certs DIR (from `fedft deploy certs DIR`), or --insecure")
    folder = Path(certs)
    for name in need:
        if not (folder / name).is_file():
            raise UsageError(f"--certs {certs!r}: {name} is missing (make the folder with `fedft deploy certs DIR`)")
    return folder


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--superlink {address!r}: give HOST:PORT, e.g. 10.0.0.5:9092")
    return host.strip("[]"), int(port)


def probe_superlink(address: str, ca: Path | None, wait: float = 10.0) -> None:
    """Raise UsageError unless a SuperLink answers at `address` (with TLS: with a certificate `ca` verifies)."""
    host, port = _split(address)
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                break
        except OSError as e:
            if time.monotonic() > deadline:
                raise UsageError(f"no SuperLink answers at {address} ({e.strerror or e}); is `fedft deploy superlink` "
                                 f"running there, and the port open?") from None
            time.sleep(0.5)
    if ca is None:
        return
    ctx = ssl.create_default_context(cafile=str(ca / CA))
    try:
        with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as e:
        raise UsageError(f"the SuperLink at {address} has a certificate that {ca / CA} does not verify "
                         f"({e.verify_message}); use the ca.crt of the folder the SuperLink's certificate came "
                         f"from") from None
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"TLS with the SuperLink at {address} failed ({getattr(e, 'reason', None) or e}); is it "
                         f"running with TLS (not --insecure)?") from None


def _exec(cmd: list[str]) -> int:
    """Run a Flower process in the foreground; Ctrl-C stops it cleanly."""
    proc = subprocess.Popen(cmd, env=flower_env())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def _bin(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        raise UsageError(f"{name} not found: pip install 'fedft[flower]'")
    return path


# ---------------------------------------------------------------- the commands


def superlink(certs: str | None, insecure: bool, host: str, port: int, database: str | None,
              auth: bool = False) -> int:
    require_flower()
    folder = _cert_files(certs, insecure, (CA, SERVER_CERT, SERVER_KEY))
    cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port)]
    cmd += ["--insecure"] if folder is None else ["--ssl-ca-certfile", str(folder / CA), "--ssl-certfile",
                                                  str(folder / SERVER_CERT), "--ssl-keyfile", str(folder / SERVER_KEY)]
    if database:
        cmd += ["--database", database]
    if auth:
        cmd += ["--enable-supernode-auth"]
    return _exec(cmd)


def register(key: str, address: str, certs: str | None, insecure: bool) -> int:
    """Register a SuperNode's public key with the SuperLink at `address` (started with --auth)."""
    require_flower()
    pub = _node_key(key, private=False)
    folder = _cert_files(certs, insecure, (CA,))
    probe_superlink(address, folder)
    write_federation("fedft", address, folder)
    done = subprocess.run([_bin("flwr"), "supernode", "register", str(pub), "fedft"], env=flower_env(),
                          capture_output=True, text=True, timeout=120)
    print((done.stdout + done.stderr).strip())
    return 0 if done.returncode == 0 else 1


def node_config(partition_id: int, num_partitions: int | None, data: str | None, threads: int = 0) -> str:
    if partition_id < 0:
        raise UsageError(f"--partition-id {partition_id}: must be >= 0")
    parts = [f"partition-id={partition_id}"]
    if num_partitions is not None:
        if not 0 <= partition_id < num_partitions:
            raise UsageError(f"--partition-id {partition_id}: must be in 0..{num_partitions - 1} (--num-partitions "
                             f"{num_partitions})")
        parts.append(f"num-partitions={num_partitions}")
    if data:
        from fedft.data.sources import SOURCES

        kind, _, path = data.partition(":")
        files = [n for n in SOURCES.names() if SOURCES.get(n, "").prefix]  # csv, tsv, jsonl, parquet, hf, imagefolder
        if kind not in files or not path:
            raise UsageError(f"--data {data!r}: give {' or '.join(f'{n}:PATH' for n in files)}")
        p = Path(path).expanduser().resolve()
        folder = kind in ("hf", "imagefolder")
        if not (p.is_dir() if folder else p.is_file()):
            raise UsageError(f"--data {data!r}: {p} {'is not a folder' if folder else 'is not a file'}")
        parts.append(f'data="{kind}:{p}"')
    if threads < 0:
        raise UsageError(f"--threads {threads}: must be >= 0 (0 = torch's default, all cores)")
    if threads:
        parts.append(f"threads={threads}")
    return " ".join(parts)


def supernode(address: str, certs: str | None, insecure: bool, partition_id: int, num_partitions: int | None,
              data: str | None, port: int, threads: int = 0, auth_key: str | None = None) -> int:
    require_flower()
    config = node_config(partition_id, num_partitions, data, threads)
    key = _node_key(auth_key, private=True) if auth_key else None
    folder = _cert_files(certs, insecure, (CA,))
    probe_superlink(address, folder)
    cmd = [_bin("flower-supernode"), "--superlink", address, "--node-config", config, "--port", str(port),
           "--max-wait-time", "3600"]
    cmd += ["--insecure"] if folder is None else ["--root-certificates", str(folder / CA)]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    code = _exec(cmd)
    if code not in (0, 130) and key is not None:  # Flower says "Failed to activate SuperNode" (its exit code 305)
        print(f"fedft: the SuperNode stopped (exit {code}); if the SuperLink refused it, is its public key registered "
              f"(fedft deploy register {key.with_suffix('.pub')} --superlink {address} ...)?", file=sys.stderr)
    return code


def _toml_value(v) -> str:
    return json.dumps(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else str(v))


def write_federation(name: str, address: str, ca: Path | None, home: Path | None = None) -> Path:
    """Add (or replace) [superlink.NAME] in $FLWR_HOME/config.toml (or home/config.toml), keeping every other
    entry."""
    home = home or Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    path = home / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = data.setdefault("superlink", {})
    links.setdefault("default", name)
    links[name] = {"address": address, **({"insecure": True} if ca is None else
                                          {"root-certificates": str((ca / CA).resolve())})}
    lines = []
    for section, table in data.items():
        flat = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines += [f"[{section}]", *[f"{k} = {_toml_value(v)}" for k, v in flat.items()], ""]
        for sub, entries in table.items():
            if isinstance(entries, dict):
                lines += [f"[{section}.{sub}]", *[f"{k} = {_toml_value(v)}" for k, v in entries.items()], ""]
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path


def app_dir(config: Config, out: Path, resume: bool = False, virtual: bool = False) -> Path:
    """The Flower app folder `flwr run` packs: only a pyproject.toml naming fedft's installed apps and holding the
    experiment (the code and the base weights are on every host already). `virtual`: Flower's simulation, whose
    nodes all hold every partition, so any node may train any client (see deploy.app.virtual_nodes); not under
    SecAgg+, whose protocol addresses each node as its own partition."""
    virtual = virtual and not config.deploy.secagg
    folder = Path(tempfile.mkdtemp(prefix="fedft-flower-app-"))
    clientapp = "client_secagg" if config.deploy.secagg else "client"
    (folder / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedft-app"
version = "1.0.0"
description = "fedft's ServerApp and ClientApp (installed with fedft on every host)"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "fedft"

[tool.flwr.app.components]
serverapp = "fedft.deploy.app:server"
clientapp = "fedft.deploy.app:{clientapp}"

[tool.flwr.app.config]
fedft-config = {json.dumps(json.dumps(config.to_dict()))}
out = {json.dumps(str(out))}
resume = {"true" if resume else "false"}
virtual-clients = {"true" if virtual else "false"}
""")
    return folder


def run_status(federation: str, env: dict | None = None) -> tuple[int | None, str]:
    """(id, status) of the newest run on the federation's SuperLink, from `flwr ls --format json`."""
    done = subprocess.run([_bin("flwr"), "ls", federation, "--format", "json"], capture_output=True, text=True,
                          env=env or flower_env(), timeout=60)
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None, f"unknown (flwr ls: {(done.stdout + done.stderr).strip()[-300:]})"
    if not runs:
        return None, "unknown (no runs listed)"
    newest = max(runs, key=lambda r: int(r.get("run-id", 0)))
    return int(newest.get("run-id", 0)), str(newest.get("status", "unknown"))


def deploy_run(config: Config, federation: str | None, address: str | None, certs: str | None, insecure: bool,
               out: str | None) -> int:
    """Submit the experiment to a SuperLink, stream its log, and check how it ended."""
    require_flower()
    check_deployable(config)
    if address:
        folder = _cert_files(certs, insecure, (CA,))
        probe_superlink(address, folder)
        federation = federation or "fedft"
        write_federation(federation, address, folder)
    elif not federation:
        raise UsageError("give --superlink HOST:PORT (with --certs DIR or --insecure) or --federation NAME (a "
                         "[superlink.NAME] of $FLWR_HOME/config.toml)")
    results = Path(out or Path("runs") / datetime.datetime.now().strftime("deploy-%Y%m%d-%H%M%S")).resolve()
    if (results / "results.json").exists():
        raise UsageError(f"--out {str(results)!r} already holds a run (results.json); choose another folder")
    app = app_dir(config, results)
    try:
        code = _exec([_bin("flwr"), "run", str(app), federation, "--stream"])
    finally:
        shutil.rmtree(app, ignore_errors=True)
    run_id, status = run_status(federation)
    print(f"fedft deploy: run {run_id} {status}; results (on the SuperLink's host) in {results}")
    return 0 if code == 0 and status == "finished:completed" else 1
