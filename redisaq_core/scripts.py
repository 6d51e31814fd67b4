"""The Lua scripts in ``redisaq_core/lua``, called by SHA with a reload on NOSCRIPT.

Each script is a ``.lua`` file beside this module; its header says which keys
and arguments it takes. Scripts run with EVALSHA; when the server answers
NOSCRIPT (a restarted or flushed Redis) the script is loaded and the call
repeated. :func:`run_pipelined` does the same for a batch of calls sent in one
round trip; its calls must be safe to repeat.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from .connection import AnyRedis

__all__ = [
    "ACK",
    "COMMIT_ASSIGNMENT",
    "DEAD_LETTER",
    "ENSURE_PARTITIONS",
    "HEARTBEAT",
    "JOB_COMPLETE",
    "JOB_UPDATE",
    "LEASE",
    "LEAVE",
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
    "SUBMIT",
    "Script",
    "ScriptCall",
    "run_pipelined",
]


class Script:
    """One Lua script of the package."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (resources.files(__package__) / "lua" / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(
        self, client: AnyRedis, keys: Sequence[Any], args: Sequence[Any] = ()
    ) -> Any:
        """Run the script on ``client`` (loading it first if the server lacks it)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


ScriptCall = tuple[Script, Sequence[Any], Sequence[Any]]


async def run_pipelined(client: AnyRedis, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls in one pipeline; results (or exception objects) in call order."""
    if not calls:
        return []
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            # execute_command: redis-py's cluster pipeline refuses .evalsha(), yet routes
            # EVALSHA by its first key; SCRIPT LOAD below reaches every primary there.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = {
            c[0] for c, r in zip(calls, results, strict=True) if isinstance(r, NoScriptError)
        }
        if not missing or attempt:
            return results
        for script in missing:
            await client.script_load(script.source)
    return results


ACK = Script("ack")
COMMIT_ASSIGNMENT = Script("commit_assignment")
DEAD_LETTER = Script("dead_letter")
ENSURE_PARTITIONS = Script("ensure_partitions")
HEARTBEAT = Script("heartbeat")
JOB_COMPLETE = Script("job_complete")
JOB_UPDATE = Script("job_update")
LEASE = Script("lease")
LEAVE = Script("leave")
REGISTRY_CLEANUP = Script("registry_cleanup")
REGISTRY_CLEAR = Script("registry_clear")
REGISTRY_DEREGISTER = Script("registry_deregister")
REGISTRY_HEARTBEAT = Script("registry_heartbeat")
REGISTRY_MARK = Script("registry_mark")
REGISTRY_READ = Script("registry_read")
REGISTRY_REGISTER = Script("registry_register")
REGISTRY_UPDATE = Script("registry_update")
RELEASE = Script("release")
REPLAY = Script("replay")
SUBMIT = Script("submit")
