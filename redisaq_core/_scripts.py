"""The Lua scripts in ``redisaq_core/lua``, called by SHA with a reload on NOSCRIPT.

Each script is a ``.lua`` file beside this module; its header says which keys
and arguments it takes. Scripts run with EVALSHA; when the server answers
NOSCRIPT (a restarted or flushed Redis) the script is loaded and the call
repeated. :func:`run_pipelined` does the same for a batch of calls sent in one
round trip, repeating only the calls that found no script.

On Redis Cluster a script runs on the primary serving its first key, so it is
loaded on the primaries that answered NOSCRIPT (found from the keys), not on
every primary: a primary that is down or failing over elsewhere in the cluster
does not stop scripts from being loaded where they run. While a slot is being
moved, a call is redirected (ASK) to a primary the slot table does not name
yet; a call that still finds no script after that load is loaded on every
primary that answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .connection import AnyRedis

__all__ = [
    "ACK",
    "APPEND",
    "CLEAR_FOREIGN",
    "COMMIT_ASSIGNMENT",
    "COUNT_RUN",
    "DEAD_LETTER",
    "DELAY",
    "DELETE_ACKED",
    "ENQUEUE_ONCE",
    "ENSURE_PARTITIONS",
    "FANOUT",
    "FANOUT_FORGET",
    "FANOUT_WRITE",
    "FORGET_CONSUMER",
    "HEARTBEAT",
    "JOBS_COMPLETE",
    "JOBS_STARTED",
    "JOB_UPDATE",
    "LEASE",
    "LEAVE",
    "LIST_PUSH",
    "MOVE_DUE",
    "READ_BACK",
    "REGISTRY_CLEANUP",
    "REGISTRY_CLEAR",
    "REGISTRY_DEREGISTER",
    "REGISTRY_HEARTBEAT",
    "REGISTRY_MARK",
    "REGISTRY_READ",
    "REGISTRY_REGISTER",
    "REGISTRY_UPDATE",
    "RELEASE",
    "REPLAY",
    "RETRY",
    "SUBMIT",
    "TRIM_ACKED",
    "Script",
    "ScriptCall",
    "ack_call",
    "ack_count",
    "node_of",
    "run_pipelined",
]


class Script:
    """One Lua script of the package.

    ``follows=True`` marks a script that must see the effects of the calls before it in
    a pipeline and may run twice (it is idempotent): when an earlier call is repeated
    after NOSCRIPT, it is repeated too, after it.
    """

    follows = False

    def __init__(self, name: str, *, follows: bool = False) -> None:
        self.name = name
        self.follows = follows
        lua = resources.files(__package__) / "lua"
        source = (lua / f"{name}.lua").read_text()
        # Shared helpers ("-- uses: a, b" on the first line) go first: a script can't import.
        first = source.partition("\n")[0]
        names = first.removeprefix("-- uses: ").split(",") if first.startswith("-- uses: ") else []
        shared = [(lua / f"_{n.strip()}.lua").read_text() for n in names]
        self.source = "".join(shared) + source
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(
        self, client: AnyRedis, keys: Sequence[Any], args: Sequence[Any] = ()
    ) -> Any:
        """Run the script on ``client`` (loading it first if the server lacks it)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client, keys[:1])
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            if not isinstance(client, RedisCluster):
                raise
            await self.load_everywhere(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, client: AnyRedis, keys: Iterable[Any] = ()) -> None:
        """Load the script where calls on ``keys`` run.

        On a cluster: the primaries serving ``keys`` (every primary when no key
        is given or the slot table is not known yet); on one server: that server.
        """
        if isinstance(client, RedisCluster):
            nodes = _nodes_of(client, keys)
            if nodes:
                await client.execute_command("SCRIPT LOAD", self.source, target_nodes=nodes)
                return
        await client.script_load(self.source)

    async def load_everywhere(self, client: RedisCluster) -> None:
        """Load the script on every primary of a cluster that answers (the others are skipped)."""
        for node in client.get_primaries():
            try:
                await client.execute_command("SCRIPT LOAD", self.source, target_nodes=node)
            except (RedisError, RedisClusterException, OSError):
                continue


def node_of(client: RedisCluster, key: Any) -> ClusterNode | None:
    """The primary serving ``key``, or ``None`` while the slot table does not know it."""
    try:
        node: ClusterNode | None = client.get_node_from_key(key)
    except (RedisClusterException, KeyError, IndexError):
        return None
    return node


def _nodes_of(client: RedisCluster, keys: Iterable[Any]) -> list[ClusterNode]:
    """The distinct primaries serving ``keys`` ([] if one of them is not known)."""
    nodes: dict[str, ClusterNode] = {}
    for key in keys:
        node = node_of(client, key)
        if node is None:
            return []
        nodes[node.name] = node
    return list(nodes.values())


ScriptCall = tuple[Script, Sequence[Any], Sequence[Any]]


async def run_pipelined(client: AnyRedis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls in one pipeline; results (or exception objects) in call order."""
    if not calls:
        return []
    if len(calls) == 1:  # the usual single-partition acknowledgement: no pipeline needed
        script, keys, args = calls[0]
        try:
            return [await script(client, keys, args)]
        except RedisError as exc:
            return [exc]
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(3):
        pipe = client.pipeline(transaction=False)
        for i in todo:
            script, keys, args = calls[i]
            # execute_command: redis-py's cluster pipeline refuses .evalsha(), yet routes
            # EVALSHA by its first key.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        replies = await pipe.execute(raise_on_error=False)
        missing: dict[Script, list[Any]] = {}
        for i, reply in zip(todo, replies, strict=True):
            results[i] = reply
            if isinstance(reply, NoScriptError):
                missing.setdefault(calls[i][0], []).extend(calls[i][1][:1])
        if not missing or attempt == 2:
            return results
        # Only the calls that found no script run again: on a cluster one node may lack a
        # script that another has, and the others' calls already took effect.
        refused = [i for i in todo if isinstance(results[i], NoScriptError)]
        todo = [i for i in todo if i in refused or (i > refused[0] and calls[i][0].follows)]
        for script, first_keys in missing.items():
            if attempt and isinstance(client, RedisCluster):
                await script.load_everywhere(client)  # redirected: see the module's text
            else:
                await script.load(client, first_keys)
    return results


ACK = Script("ack")
APPEND = Script("append")


def ack_call(
    stream: Any, lease: Any, group: str, token: str, ids: Iterable[str], *, delete: bool = False
) -> ScriptCall:
    """A call of ``ACK`` for entries ``ids`` of ``stream``; ``delete``: XACKDEL ... ACKED.

    Entry ids never hold a space, so they travel joined by spaces, encoded once.
    """
    return (ACK, [stream, lease], [group, token, b"1" if delete else b"0", " ".join(ids).encode()])


def ack_count(args: Sequence[Any]) -> int:
    """How many entries an :func:`ack_call`'s arguments name."""
    return int(args[3].count(b" ")) + 1 if args[3] else 0


CLEAR_FOREIGN = Script("clear_foreign")
COMMIT_ASSIGNMENT = Script("commit_assignment")
COUNT_RUN = Script("count_run")
DEAD_LETTER = Script("dead_letter")
DELAY = Script("delay")
DELETE_ACKED = Script("delete_acked", follows=True)
ENQUEUE_ONCE = Script("enqueue_once")
ENSURE_PARTITIONS = Script("ensure_partitions")
FANOUT = Script("fanout")
FANOUT_FORGET = Script("fanout_forget")
FANOUT_WRITE = Script("fanout_write")
FORGET_CONSUMER = Script("forget_consumer")
GIVE_BACK = Script("give_back")
HEARTBEAT = Script("heartbeat")
JOB_UPDATE = Script("job_update")
JOBS_COMPLETE = Script("jobs_complete")
JOBS_STARTED = Script("jobs_started")
LEASE = Script("lease")
LEAVE = Script("leave")
LIST_PUSH = Script("list_push")
MOVE_DUE = Script("move_due")
REGISTRY_CLEANUP = Script("registry_cleanup")
REGISTRY_CLEAR = Script("registry_clear")
REGISTRY_DEREGISTER = Script("registry_deregister")
REGISTRY_HEARTBEAT = Script("registry_heartbeat")
REGISTRY_MARK = Script("registry_mark")
REGISTRY_READ = Script("registry_read")
REGISTRY_REGISTER = Script("registry_register")
REGISTRY_UPDATE = Script("registry_update")
READ_BACK = Script("read_back")
RELEASE = Script("release")
RETRY = Script("retry")
REPLAY = Script("replay")
SCHEDULE_START = Script("schedule_start")
SUBMIT = Script("submit")
TRIM_ACKED = Script("trim_acked")
