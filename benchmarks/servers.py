"""``python -m benchmarks.servers``: the same cases on every server of the matrix, in one run.

For each server (``--servers``, default all four) it runs ``python -m
benchmarks --json`` with ``REDISAQ_SERVER`` set, keeping end-to-end max rate,
process_batch and the idle cost, and prints one table with the library's
rate beside raw redis-py's on the same server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import orjson

from redisaq_core.embedded import KNOWN_SERVERS, find_server

CASES = ("end_to_end", "process_batch")
DELETE_ACKED = "process_batch_delete_acked"


def _run(server: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks", "--json", "--repeat", str(args.repeat),
        "--n", str(args.n), "--idle-seconds", str(args.idle_seconds),
        *[arg for case in (*CASES, DELETE_ACKED) for arg in ("--only", case)], "--only", "idle",
    ]  # fmt: skip
    env = {**os.environ, "REDISAQ_SERVER": server}
    env.pop("REDISAQ_REDIS_SERVER", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    doc: dict[str, Any] = orjson.loads(done.stdout)
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the cases on each server and print the table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.servers", description=__doc__)
    p.add_argument("--servers", default=",".join(KNOWN_SERVERS), help="comma-separated names")
    p.add_argument("--repeat", type=int, default=3, help="runs per case, best kept (default 3)")
    p.add_argument("--n", type=int, default=20_000, help="messages per run (default 20,000)")
    p.add_argument("--idle-seconds", type=float, default=6.0, help="idle window (default 6)")
    args = p.parse_args(argv)
    lines = [
        "| server | end-to-end, max rate (lib / raw, msgs/s) | ratio "
        "| process_batch (lib / raw, msgs/s) | ratio | idle requests/s | idle server commands/s "
        "| process_batch, delete-acked (XACKDEL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.servers.split(","):
        binary = find_server(name)
        print(f"{binary} ...", file=sys.stderr, flush=True)
        rows = {r["key"]: r for r in _run(name, args)["results"]}
        cells = [str(binary).split(" (")[0]]
        for case in CASES:
            r = rows[case]
            cells += [f"{r['rate']:,.0f} / {r['raw_rate']:,.0f}", f"{r['ratio']:.2f}x"]
        idle = rows["idle"]
        cells += [f"{idle['requests_per_s']:.2f}", f"{idle['server_commands_per_s']:.2f}"]
        deleting = rows.get(DELETE_ACKED)
        cells.append(
            f"{deleting['rate']:,.0f} msgs/s, {deleting['ratio']:.2f}x" if deleting else "n/a"
        )
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
