"""The Ray cluster as the orchestrator sees it: which node declares which device model, and how nodes join.

A node *declares* the GPU model it hosts when it joins (`make worker HEAD=host:port GPU=rtx2060`); the
model is never guessed from driver names, which differ between drivers. Declaring means:

- the custom resource `timing_<model>` = the node's GPU count: one timing slot per physical GPU. A job for
  the model holds one slot and, on a real GPU, `num_gpus=1` (never a fraction), so it runs only on a node
  with the model and never beside another timing job on the same GPU;
- the node label `gpu_model=<model>`, which each run records (param `node_gpu_model`);
- `timing_cpu` = 1 on every node: one timing slot for the host CPU per node.

A node declared with GPUS=0 has one `timing_<model>` slot and no GPU: it takes the model's jobs only as a
CPU stand-in (`stand_in=cpu`), which the runs record as such. Before dispatch, `ClusterView.lacking`
says which asked-for models no node offers: Ray would otherwise wait forever for them.

A head on 127.0.0.1 (the default: nothing listens beyond this machine) is Ray's single-machine mode,
which `ray start` workers cannot join: for several machines start the head on an address they reach
(`make head HOST=<LAN address>`); on one machine the head may declare its own GPUs (`make head GPU=...`).
Nodes and drivers authenticate with Ray's token (RAY_AUTH_MODE=token, ~/.ray/auth_token on each machine).

    python -m orchestrator.cluster head [--host 127.0.0.1] [--port 6379] [--gpu MODEL] [--block]
    python -m orchestrator.cluster worker --head HOST:PORT [--gpu MODEL] [--gpus N] [--block]
    python -m orchestrator.cluster status [--address HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import CONF_DIR, ConfigError
from workers.hostinfo import MISMATCH_LABEL, gpu_model_check, same_gpu_model, visible_gpu_names

MODEL_LABEL = "gpu_model"  # node label: the GPU model the node declared when it joined
GPU_COUNT_LABEL = "gpu_count"  # node label: how many GPUs it declared (0: a CPU stand-in node)
TIMING_PREFIX = "timing_"
CPU = "cpu"  # the device key of a node's host CPU
LOCAL_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds a loopback node to 127.0.0.1 only
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # token | disabled: Ray's token authentication between nodes and drivers
DEFAULT_PORT = 6379
EXIT_BAD_INPUT = 2
# What to do when no cluster answers: said after the reason by every command that needs one
NO_CLUSTER_HINT = (
    "start a head with `make head` (on this machine, GPU=MODEL to declare its GPUs) and workers with "
    "`make worker HEAD=host:port GPU=MODEL`, or give the head's address (HEAD=host:port, cluster.address=)"
)
PROBE_TIMEOUT_S = 5.0  # seconds to wait for a head's TCP port, and again for its gRPC handshake


def resource_for(device: str) -> str:
    """The custom Ray resource that serialises timing jobs on `device` (a catalog key)."""
    return f"{TIMING_PREFIX}{device}"


def is_loopback(address: str) -> bool:
    """True for a Ray address on this machine's loopback interface (127.x.x.x, localhost, ::1)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def resolve_address(address: str) -> str:
    """`auto` → the address of the cluster started on this machine (RAY_ADDRESS, else the file Ray writes
    at /tmp/ray/ray_current_cluster), so that a loopback head can be told apart; others unchanged."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    path = Path(os.environ.get("RAY_TMPDIR") or "/tmp") / "ray" / "ray_current_cluster"
    try:
        return path.read_text().strip() or address
    except OSError:
        return address


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address `host:port`, `[v6]:port` or `ray://host:port` (port 6379 if none)."""
    rest = address.split("://", 1)[-1].rstrip("/")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    try:
        return host, int(port) if port else DEFAULT_PORT
    except ValueError:
        raise ConfigError(
            f"malformed Ray address {address!r}: expected host:port, e.g. 10.0.0.1:6379"
        ) from None


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing at `address` answers as a Ray head within about 2 x `timeout` seconds (one phrase), or
    None: something accepts TCP connections there and completes a gRPC (HTTP/2) handshake, as Ray's GCS
    does. Checked before `ray.init`, which would otherwise retry for minutes, printing warnings."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    try:
        import grpc
    except ImportError:  # Ray depends on grpcio: without it, the TCP answer is all there is to check
        return None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return f"something listens there but does not answer as Ray's GCS (gRPC) within {timeout:g} s"
    finally:
        channel.close()
    return None


def check_reachable(address: str) -> None:
    """Raise one ConfigError line naming `address` and what to check when no Ray head answers there."""
    why = probe(address)
    if why is not None:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address}: {why}. Check that its head is running "
            f"(`make head` there; `make ray-status HEAD={address}`), that {address} is the head's address "
            f"and GCS port ({DEFAULT_PORT} unless the head was started with another RAY_PORT), and that no "
            "firewall blocks it"
        )


def local_gpu_count() -> int:
    """GPUs visible on this machine (CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`); 0 without a driver."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def token_available() -> bool:
    """True when a Ray auth token is at hand: RAY_AUTH_TOKEN, file RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def use_token_auth() -> None:
    """For a driver joining a cluster: token authentication when a token is at hand (and RAY_AUTH_MODE is
    unset). `make head` starts token-authenticated clusters; a token-mode driver also joins one without."""
    if AUTH_MODE_ENV not in os.environ and token_available():
        os.environ[AUTH_MODE_ENV] = "token"


# --- what the cluster offers ------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    """One alive Ray node: where it is, what it declared."""

    node_id: str
    ip: str
    hostname: str
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return int(self.resources.get("GPU", 0))

    def slots(self, device: str) -> int:
        """Timing slots this node offers for `device`."""
        return int(self.resources.get(resource_for(device), 0))

    @property
    def devices(self) -> list[str]:
        """Device keys the node offers timing slots for (cpu and declared models)."""
        return sorted(k.removeprefix(TIMING_PREFIX) for k, v in self.resources.items()
                      if k.startswith(TIMING_PREFIX) and v >= 1)  # fmt: skip


@dataclass(frozen=True)
class Offer:
    """What the whole cluster offers for one device key."""

    device: str
    slots: int  # timing slots over all nodes
    nodes: int  # nodes offering it
    gpu_nodes: int  # of those, nodes with at least one GPU

    def describe(self) -> str:
        where = f"{self.slots} slot{'s' * (self.slots != 1)} on {self.nodes} node{'s' * (self.nodes != 1)}"
        if self.device != CPU and self.gpu_nodes == 0:
            where += ", no GPU: stand-in only"
        return f"{self.device} ({where})"


@dataclass(frozen=True)
class ClusterView:
    """The alive nodes of a Ray cluster and the device models they declared."""

    nodes: tuple[Node, ...]

    @classmethod
    def from_ray(cls, ray: Any) -> ClusterView:
        """Read the alive nodes from a connected `ray` module (one GCS call)."""
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            labels = {k: str(v) for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
            nodes.append(
                Node(
                    node_id=str(n.get("NodeID", "")),
                    ip=str(n.get("NodeManagerAddress", "")),
                    hostname=str(n.get("NodeManagerHostname", "")),
                    labels=labels,
                    resources={k: float(v) for k, v in (n.get("Resources") or {}).items()},
                )
            )
        return cls(tuple(nodes))

    def offers(self) -> dict[str, Offer]:
        """device key → what the cluster offers for it, for every device some node has slots for."""
        found: dict[str, Offer] = {}
        for device in sorted({d for node in self.nodes for d in node.devices}):
            with_it = [n for n in self.nodes if n.slots(device) >= 1]
            found[device] = Offer(
                device, sum(n.slots(device) for n in with_it), len(with_it), sum(n.gpus > 0 for n in with_it)
            )
        return found

    def describe(self) -> str:
        """One line: every device the cluster offers, with slots and nodes; `nothing` when empty."""
        offers = self.offers()
        return ", ".join(o.describe() for o in offers.values()) if offers else "no timing slots at all"

    def lacking(self, devices: Mapping[str, str]) -> list[str]:
        """What the cluster lacks to run jobs on `devices` (device key → the kind its jobs build for:
        cuda needs a node with the model's slot AND a GPU; cpu, the slot alone), one phrase per device
        naming the resources; empty when it has everything."""
        missing = []
        for device, kind in devices.items():
            with_slot = [n for n in self.nodes if n.slots(device) >= 1]
            if not with_slot:
                missing.append(f"{device} (resource {resource_for(device)})")
            elif kind == "cuda" and not any(n.gpus >= 1 for n in with_slot):
                missing.append(
                    f"{device} with a GPU ({resource_for(device)} and GPU on one node; its nodes have "
                    "no GPU, stand_in=cpu would run CPU kernels there)"
                )
        return missing

    def declared_models(self) -> list[str]:
        """GPU models that some node declared (slot or label), sorted; the host CPU is not a model."""
        models = {d for n in self.nodes for d in n.devices if d != CPU}
        models |= {n.labels[MODEL_LABEL] for n in self.nodes if n.labels.get(MODEL_LABEL)}
        return sorted(models)

    def node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)


def check_devices(view: ClusterView, devices: Mapping[str, str], where: str) -> None:
    """Raise one ConfigError line naming what is missing and what the cluster has, when it lacks any."""
    missing = view.lacking(devices)
    if missing:
        raise ConfigError(
            f"no node of {where} offers the device model(s) the experiment asks for: {'; '.join(missing)}. "
            f"The cluster has: {view.describe()}. Join a node with `make worker HEAD=host:port GPU=MODEL`"
        )


def auto_devices(view: ClusterView, catalog: Mapping[str, Any], where: str) -> list[str]:
    """devices=[auto]: every GPU model the cluster's nodes declared, each a device catalog key."""
    models = view.declared_models()
    unknown = [m for m in models if m not in catalog]
    if unknown:
        raise ConfigError(
            f"{where} declares GPU model(s) {', '.join(unknown)} missing from conf/catalog/devices.yaml; "
            f"add them there (valid models: {', '.join(k for k in catalog if k != CPU)})"
        )
    if not models:
        raise ConfigError(
            f"devices=[auto]: {where} declares no GPU model (it has: {view.describe()}); join GPU nodes "
            "with `make worker HEAD=host:port GPU=MODEL`, or name devices=[...]"
        )
    return models


# --- joining the cluster: `ray start` command lines ------------------------------------------------
def gpu_models() -> dict[str, str]:
    """GPU model keys of the device catalog (conf/catalog/devices.yaml) → their human names."""
    from omegaconf import OmegaConf

    catalog = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "catalog" / "devices.yaml"))
    return {k: str(v.get("model", k)) for k, v in catalog.items() if v.get("kind") == "cuda"}  # type: ignore[union-attr]


def declaration(gpu: str | None, gpus: int | None) -> tuple[dict[str, float], dict[str, str], int]:
    """(resources, labels, num_gpus) a node declares for `gpu` (a catalog model) with `gpus` GPUs.

    gpus None = the GPUs visible here (CUDA_VISIBLE_DEVICES respected); 0 with a model = a stand-in node.
    """
    count = local_gpu_count() if gpus is None else gpus
    if count < 0:
        raise ConfigError(f"GPUS must be >= 0, got {count}")
    resources: dict[str, float] = {resource_for(CPU): 1}
    if gpu is None:
        if count > 0:
            raise ConfigError(
                f"this node has {count} GPU(s): declare their model with GPU=MODEL "
                f"(valid: {', '.join(gpu_models())}) or GPUS=0 for a CPU-only node"
            )
        return resources, {}, 0
    models = gpu_models()
    if gpu not in models:
        raise ConfigError(f"unknown GPU model {gpu!r}; valid models: {', '.join(models)}")
    resources[resource_for(gpu)] = max(count, 1)  # a GPU-less node: one stand-in slot
    check = gpu_model_check(models[gpu], visible_gpu_names()) if count > 0 else "unknown"
    return resources, {MODEL_LABEL: gpu, GPU_COUNT_LABEL: str(count), MISMATCH_LABEL: check}, count


def model_note(gpu: str, count: int, names: Sequence[str], models: Mapping[str, str]) -> str | None:
    """One line for a node declaring `gpu` (a key of `models`, catalog key → model name) with `count`
    GPUs whose driver names them `names`: a warning when they are not that model, a note when there is
    nothing to compare with, None when they are."""
    check = gpu_model_check(models[gpu], names) if count > 0 else "unknown"
    if check == "false":
        return None
    if check == "unknown":
        why = (
            "it offers no GPU (none visible here, or GPUS=0)"
            if count == 0
            else "no GPU driver names its GPUs here (nvidia-smi)"
        )
        return (
            f"note: this node declares GPU={gpu} ({models[gpu]}) and {why}: there is nothing to compare the "
            f"declared model with; its jobs record {MISMATCH_LABEL}=unknown"
        )
    seen = sorted(set(names))
    likely = [k for k, model in models.items() if any(same_gpu_model(model, n) for n in seen)]
    hint = f"GPU={likely[0]}" if likely else f"a model of conf/catalog/devices.yaml ({', '.join(models)})"
    return (
        f"warning: this node declares GPU={gpu} ({models[gpu]}) but its driver names its GPU(s) "
        f"{', '.join(seen)}: its jobs will be recorded as {gpu} with {MISMATCH_LABEL}=true; declare {hint}"
    )


def _ray_bin() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def start_command(
    head: str | None,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    gpu: str | None = None,
    gpus: int | None = None,
    dashboard: bool = False,
    block: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) of `ray start` for a head (head=None) or a worker joining `head`.

    Loopback by default: a head on 127.0.0.1 sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 so that Ray binds
    its servers to that address only. The dashboard is off unless asked for, and then on 127.0.0.1.
    Token authentication (RAY_AUTH_MODE=token) unless RAY_AUTH_MODE is set: the head creates
    ~/.ray/auth_token if missing (see `main`), and every worker and driver machine needs the same token.
    """
    resources, labels, num_gpus = declaration(gpu, gpus)
    argv = [_ray_bin(), "start", "--disable-usage-stats", f"--num-gpus={num_gpus}"]
    argv.append(f"--resources={json.dumps(resources, sort_keys=True)}")
    if labels:
        argv.append("--labels=" + ",".join(f"{k}={v}" for k, v in labels.items()))
    if head is None:
        argv += ["--head", f"--node-ip-address={host}", f"--port={port}"]
        argv += (
            ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
            if dashboard
            else ["--include-dashboard=false"]
        )
        loopback = is_loopback(host)
    else:
        if is_loopback(head):
            raise ConfigError(
                f"a head on {head} is in Ray's single-machine mode and takes no `ray start` workers; for "
                "several nodes start the head on an address they reach (make head HOST=<LAN address>), "
                "or let a one-machine head declare its GPUs itself (make head GPU=MODEL)"
            )
        argv.append(f"--address={head}")
        loopback = False
        if host != "127.0.0.1":
            argv.append(f"--node-ip-address={host}")
    if block:
        argv.append("--block")
    env = {LOCAL_MODE_ENV: "0"} if loopback else {}
    if AUTH_MODE_ENV not in os.environ:  # token authentication unless the user chose otherwise
        env[AUTH_MODE_ENV] = "token"
        if head is not None and not token_available():
            raise ConfigError(
                "no Ray auth token on this machine: copy the head's ~/.ray/auth_token here (or set "
                "RAY_AUTH_TOKEN); RAY_AUTH_MODE=disabled joins a head started without token auth"
            )
    return argv, env


# --- command line ----------------------------------------------------------------------------------
def _status(address: str) -> None:
    address = resolve_address(address)
    if address == "auto":
        raise ConfigError(
            "no Ray cluster to ask: none was started on this machine (make head) and RAY_ADDRESS is unset; "
            "give the head's address: make ray-status HEAD=host:port"
        )
    check_reachable(address)
    if is_loopback(address):
        os.environ.setdefault(LOCAL_MODE_ENV, "0")
    use_token_auth()
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to Ray at {address}: {first}; {NO_CLUSTER_HINT}") from None
    try:
        view = ClusterView.from_ray(ray)
    finally:
        ray.shutdown()
    for node in view.nodes:
        model = node.labels.get(MODEL_LABEL, "-")
        print(f"{node.node_id[:12]}  {node.ip:<15} {node.hostname:<20} model={model:<10} "
              f"gpus={node.gpus} slots={','.join(f'{d}:{node.slots(d)}' for d in node.devices)}")  # fmt: skip
    print(f"offers: {view.describe()}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: head | worker (exec `ray start` with the node's declaration) | status."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.cluster", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("head", "worker"):
        p = sub.add_parser(name, help=f"start a Ray {name} node declaring its GPU model")
        if name == "worker":
            p.add_argument("--head", required=True, help="the head's address, host:port")
            p.add_argument("--host", default="127.0.0.1", help="this node's IP as the head reaches it")
        else:
            p.add_argument(
                "--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine)"
            )
            p.add_argument("--port", type=int, default=DEFAULT_PORT, help="GCS port")
            p.add_argument("--dashboard", action="store_true", help="start the dashboard (on 127.0.0.1)")
        p.add_argument("--gpu", help="the GPU model of this node (a conf/catalog/devices.yaml key)")
        p.add_argument("--gpus", type=int, help="GPUs to offer (default: visible ones; 0 = stand-in node)")
        p.add_argument("--block", action="store_true", help="stay in the foreground; stop the node on exit")
        p.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    p = sub.add_parser("status", help="list the cluster's nodes and the models they declared")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="Ray address")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            _status(args.address)
            return
        head = args.head if args.command == "worker" else None
        command, env = start_command(
            head,
            host=args.host,
            port=getattr(args, "port", DEFAULT_PORT),
            gpu=args.gpu,
            gpus=args.gpus,
            dashboard=getattr(args, "dashboard", False),
            block=args.block,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    print(shlex.join([*(f"{k}={v}" for k, v in env.items()), *command]), flush=True)
    if args.gpu:
        count = local_gpu_count() if args.gpus is None else args.gpus
        note = model_note(args.gpu, count, visible_gpu_names(), gpu_models())
        if note:
            print(note, file=sys.stderr, flush=True)
    if args.dry_run:
        return
    if head is None and env.get(AUTH_MODE_ENV) == "token" and not token_available():
        subprocess.run(
            [_ray_bin(), "get-auth-token", "--generate"], capture_output=True, check=True
        )  # not shown
        print(
            f"created the cluster's auth token {Path.home() / '.ray' / 'auth_token'}: copy it to each worker"
        )
    os.execvpe(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    main()
