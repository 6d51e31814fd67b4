"""``redisaq jobs cancel ID``: cancel a job."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigurationError
from ..keys import parse_job_id
from ..results import ResultStore
from .common import EXIT_OK, UsageError, add_format, leaf_parent, print_json, redis_url

__all__ = ["add_commands"]


def add_commands(sub: Any) -> None:
    """Register ``jobs`` and its actions."""
    p = sub.add_parser("jobs", help="cancel jobs")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "cancel",
        help="cancel a job: one not started never starts, a running one's handler is stopped",
        description="Cancel a job. Prints its new status: cancelled (it had not started), "
        "or cancelling (its worker stops the handler on its next heartbeat). Exit code 1 "
        "for an unknown job id or a job already finished (completed, dead, cancelled).",
        parents=[leaf_parent()],
    )
    a.add_argument("job_id", metavar="ID", help="the job id (topic/partition/hex)")
    add_format(a)
    a.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Carry out one ``jobs`` action (``JobNotFoundError``, ``JobFinishedError``: exit 1)."""
    try:
        parse_job_id(args.job_id)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    async with ResultStore(redis_url=redis_url(args)) as store:
        status = await store.cancel(args.job_id)
    if args.format == "json":
        print_json({"job_id": args.job_id, "status": status.value})
    else:
        print(f"{args.job_id} {status.value}")
    return EXIT_OK
