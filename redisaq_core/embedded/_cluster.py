"""A Redis Cluster of redis-server child processes on loopback (:class:`EmbeddedCluster`)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis as SyncRedis

from .._failures import REDIS_FAILURES
from ..errors import EmbeddedRedisError
from ._server import EmbeddedRedis, _LocalServers, find_redis_server

__all__ = ["SLOTS", "EmbeddedCluster", "free_cluster_port"]

log = logging.getLogger(__name__)


SLOTS = 16384


_BUS_OFFSET = 10000  # Redis 6.2 has no ``cluster-port``: the bus is always port + 10000


_FAILED_FLAGS = {"fail", "fail?", "handshake", "noaddr"}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_cluster_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free on ``host`` a moment ago, with its cluster bus port too.

    A cluster node also listens on ``port + 10000`` for its peers, so the port
    is taken below 55536 and both must be free.
    """
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(20000, 65536 - _BUS_OFFSET)
        if _port_free(host, port) and _port_free(host, port + _BUS_OFFSET):
            return port
    raise EmbeddedRedisError(f"no free pair of ports (port, port + {_BUS_OFFSET}) on {host}")


def _slot_ranges(masters: int) -> list[range]:
    bounds = [i * SLOTS // masters for i in range(masters + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(masters)]


@dataclass(frozen=True)
class _NodeLine:
    """One line of CLUSTER NODES, as much of it as agreement checks need."""

    node_id: str
    port: int
    role: str
    failed: bool
    master_id: str
    slots: tuple[str, ...]


def _parse_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        flags = set(parts[2].split(","))
        role = "master" if "master" in flags else "replica" if "slave" in flags else "?"
        port = int(parts[1].split("@", 1)[0].rpartition(":")[2])
        failed = bool(flags & _FAILED_FLAGS)
        lines.append(_NodeLine(parts[0], port, role, failed, parts[3], tuple(parts[8:])))
    return lines


class EmbeddedCluster(_LocalServers):
    """A Redis Cluster of redis-server child processes on free loopback ports.

    ``masters`` primaries share the 16384 hash slots evenly; each gets
    ``replicas`` replicas. The cluster is built with plain commands (CLUSTER
    SET-CONFIG-EPOCH, ADDSLOTS, MEET, REPLICATE), so it works with Redis 6.2,
    whose ``redis-cli`` may lack ``--cluster create``. ``start()`` returns once
    every node reports ``cluster_state:ok``, all of them agree on the slot map
    and every replica is in sync with its primary.

    ``urls`` has one ``redis+cluster://host:port`` URL per current primary and
    ``url`` is the first, ready for ``redis_url=``. ``nodes`` lists every
    node (the initial primaries first, then their replicas), ``pids`` their
    process ids. For failover tests: :meth:`kill_master` SIGKILLs a primary,
    :meth:`wait_ok` waits for the cluster to heal (a replica promoted),
    :meth:`restart_node` brings a killed node back (it rejoins as a replica).
    ``stop()`` stops exactly the processes started here, by pid.

    ``node_timeout_ms`` is Redis' ``cluster-node-timeout``: how long a primary
    may be unreachable before its replica takes over (short by default, for
    tests). Use as ``with EmbeddedCluster() as c:`` or ``async with``.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        node_timeout_ms: int = 1000,
        extra_args: list[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if isinstance(masters, bool) or not isinstance(masters, int) or masters < 1:
            raise EmbeddedRedisError(f"masters must be an integer >= 1, got {masters!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise EmbeddedRedisError(f"replicas must be an integer >= 0, got {replicas!r}")
        self.masters_count = masters
        self.replicas_count = replicas
        self.host = host
        self._binary = binary
        self.node_timeout_ms = node_timeout_ms
        self._extra = list(extra_args or [])
        self._timeout = startup_timeout
        self.nodes: list[EmbeddedRedis] = []
        self._primaries: list[EmbeddedRedis] = []
        self._ids: dict[int, str] = {}

    # ---- description ------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """One ``redis+cluster://host:port`` URL per running primary, in slot order."""
        return [f"redis+cluster://{n.host}:{n.port}" for n in self._primaries if n.running]

    @property
    def url(self) -> str:
        """The first of :attr:`urls`: any node lets a client discover the whole cluster."""
        urls = self.urls
        if not urls:
            raise EmbeddedRedisError("the cluster is not running")
        return urls[0]

    @property
    def masters(self) -> list[EmbeddedRedis]:
        """The primaries as of the last :meth:`wait_ok` (promoted replicas included)."""
        return list(self._primaries)

    @property
    def replicas(self) -> list[EmbeddedRedis]:
        """Running nodes that are not primaries."""
        return [n for n in self.nodes if n.running and n not in self._primaries]

    @property
    def pids(self) -> list[int]:
        """Process ids of the running nodes."""
        return [n.pid for n in self.nodes if n.pid is not None and n.running]

    @property
    def running(self) -> bool:
        """Whether every node started here is alive."""
        return bool(self.nodes) and all(n.running for n in self.nodes)

    def node_id(self, node: EmbeddedRedis) -> str:
        """The cluster node id of ``node``."""
        return self._ids[node.port]

    # ---- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the nodes, build the cluster and wait until it is ready (idempotent)."""
        if self.nodes:
            return
        try:
            self._launch()
            self._form()
            self.wait_ok(self._timeout)
        except BaseException:
            self.stop()
            raise

    def _node_args(self, port: int) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            *self._extra,
        ]  # fmt: skip

    def _launch(self) -> None:
        binary = self._binary or find_redis_server()
        total = self.masters_count * (1 + self.replicas_count)
        for _ in range(total):
            last: EmbeddedRedisError | None = None
            for _attempt in range(5):
                port = free_cluster_port(self.host)
                node = EmbeddedRedis(
                    port=port, host=self.host, binary=binary, extra_args=self._node_args(port),
                    startup_timeout=self._timeout,
                )  # fmt: skip
                try:
                    node.start()
                except EmbeddedRedisError as exc:  # the port was taken meanwhile: another one
                    node.stop()
                    last = exc
                    continue
                self.nodes.append(node)
                break
            else:
                assert last is not None
                raise last
        log.debug("cluster nodes started on ports %s", [n.port for n in self.nodes])

    def _client(self, node: EmbeddedRedis) -> SyncRedis:
        return SyncRedis(
            host=node.host, port=node.port, decode_responses=True, socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )  # fmt: skip

    def _command(self, node: EmbeddedRedis, *args: Any) -> Any:
        client = self._client(node)
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def _form(self) -> None:
        m = self.masters_count
        for i, node in enumerate(self.nodes):
            self._ids[node.port] = str(self._command(node, "CLUSTER", "MYID"))
            self._command(node, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node, slots in zip(self.nodes[:m], _slot_ranges(m), strict=True):
            self._command(node, "CLUSTER", "ADDSLOTS", *slots)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._command(node, "CLUSTER", "MEET", first.host, first.port)
        self._poll(self._everyone_known, self._timeout, "every node to know every other")
        for j, replica in enumerate(self.nodes[m:]):
            primary = self.nodes[j // self.replicas_count]
            self._command(replica, "CLUSTER", "REPLICATE", self._ids[primary.port])

    def _everyone_known(self) -> bool:
        want = set(self._ids.values())
        for node in self.nodes:
            lines = _parse_nodes(self._command(node, "CLUSTER", "NODES"))
            if {x.node_id for x in lines if not x.failed} != want:
                return False
        return True

    def _poll(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                if check():
                    return
            except REDIS_FAILURES as exc:
                last = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(
                    f"cluster: timed out after {timeout:.0f}s waiting for {what}{last}"
                )
            time.sleep(0.05)

    def _healthy(self) -> bool:
        """Every running node: state ok, same view of the cluster, replicas in sync."""
        live = [n for n in self.nodes if n.running]
        by_port = {n.port: n for n in self.nodes}  # all on one host; a lone node has no IP
        views = []
        for node in live:
            info = self._command(node, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info:
                return False
            lines = _parse_nodes(self._command(node, "CLUSTER", "NODES"))
            views.append(sorted((x.node_id, x.role, x.failed, x.master_id, x.slots) for x in lines))
        if not views or any(v != views[0] for v in views):
            return False
        lines = _parse_nodes(self._command(live[0], "CLUSTER", "NODES"))
        primaries = [x for x in lines if x.role == "master" and x.slots and not x.failed]
        for x in lines:
            known = by_port.get(x.port)
            if known is not None and known.running == x.failed:
                return False  # a live node taken for failed, or a dead one not yet noticed
        if sum(len(_expand(x.slots)) for x in primaries) != SLOTS:
            return False
        for node in live:
            if node in (by_port.get(x.port) for x in primaries):
                continue
            replication = self._command(node, "INFO", "replication")
            if replication.get("master_link_status") != "up":
                return False
        primaries.sort(key=lambda x: min(_expand(x.slots)))
        self._primaries = [by_port[x.port] for x in primaries]
        return True

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node is ``cluster_state:ok`` and all agree.

        Also requires each slot to be served by a running primary and each
        running replica to be linked to its primary; updates :attr:`masters`.
        After :meth:`kill_master` this returns once a replica has taken over.
        """
        self._poll(self._healthy, timeout, "cluster_state:ok on every node")

    async def wait_ok_async(self, timeout: float = 30.0) -> None:
        """:meth:`wait_ok` in a worker thread, for use inside an event loop."""
        await asyncio.to_thread(self.wait_ok, timeout)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every running replica has what its primary had written when called.

        Redis replicates asynchronously: a write a primary acknowledged is lost
        if the primary dies before its replica received it. A failover test
        calls this before killing a primary to know what must survive.
        """
        targets: dict[int, int] = {}
        for primary in self._primaries:
            if primary.running:
                info = self._command(primary, "INFO", "replication")
                targets[primary.port] = int(info.get("master_repl_offset", 0))

        def caught_up() -> bool:
            for node in self.replicas:
                info = self._command(node, "INFO", "replication")
                want = targets.get(int(info.get("master_port", 0)))
                if want is not None and int(info.get("slave_repl_offset", 0)) < want:
                    return False
            return True

        self._poll(caught_up, timeout, "replicas to catch up with their primaries")

    def master_of_slot(self, slot: int) -> EmbeddedRedis:
        """The primary serving ``slot`` (as of the last :meth:`wait_ok`)."""
        for i, r in enumerate(_slot_ranges(self.masters_count)):
            if slot in r:
                return self._primaries[i]
        raise EmbeddedRedisError(f"slot must be in 0..{SLOTS - 1}, got {slot!r}")

    def kill_master(self, index: int = 0) -> EmbeddedRedis:
        """SIGKILL the ``index``-th primary (in slot order) and return its node.

        Its replica (if any) takes over after about ``node_timeout_ms``; call
        :meth:`wait_ok` to wait for that.
        """
        node = self._primaries[index]
        node.kill()
        log.info("cluster: killed primary on port %d", node.port)
        return node

    def restart_node(self, node: EmbeddedRedis) -> None:
        """Start a killed node again on its port; it rejoins (a former primary as a replica)."""
        if node not in self.nodes:
            raise EmbeddedRedisError("that node was not started by this cluster")
        node.restart()

    def stop(self) -> None:
        """Stop every node started here (by pid) and remove their directories (idempotent)."""
        nodes, self.nodes = self.nodes, []
        self._primaries = []
        self._ids = {}
        for node in nodes:
            node.stop()


def _expand(slots: tuple[str, ...]) -> list[int]:
    out: list[int] = []
    for item in slots:
        if item.startswith("["):
            continue  # a slot being imported or migrated
        low, _, high = item.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out
