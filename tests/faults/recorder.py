"""A handler for fault tests: records every call to a file, one line per event.

Environment: ``RECORD_FILE`` (required) is appended to; ``HANDLER_DELAY`` seconds
each handler sleeps; ``CLOCK_OFFSET``: the process's clock is off by that much
(the recorded times are corrected, so that processes can be compared);
payloads with ``"fail": true`` always raise; payloads with ``"crash": true``
end the process at once (as a segfault or the OOM killer would).

Lines: ``start|end PID PARTITION MSG_ID N DELIVERIES TIME``.
"""

from __future__ import annotations

import asyncio
import os
import time

from redisaq_core import Message

_FILE = open(os.environ["RECORD_FILE"], "a", buffering=1)  # noqa: SIM115 - lives as long as the process
_DELAY = float(os.environ.get("HANDLER_DELAY", "0"))
_PID = os.getpid()
_SKEW = float(os.environ.get("CLOCK_OFFSET", "0"))  # set by tests/faults/skewed.py


def _line(kind: str, m: Message) -> None:
    n = m.payload.get("n") if isinstance(m.payload, dict) else None
    _FILE.write(
        f"{kind} {_PID} {m.partition} {m.msg_id} {n} {m.deliveries} {time.time() - _SKEW:.6f}\n"
    )


async def handle(m: Message) -> None:
    _line("start", m)
    if _DELAY:
        await asyncio.sleep(_DELAY)
    if isinstance(m.payload, dict) and m.payload.get("crash"):
        os._exit(9)
    if isinstance(m.payload, dict) and m.payload.get("fail"):
        raise RuntimeError(f"refusing message {m.payload.get('n')}")
    _line("end", m)
