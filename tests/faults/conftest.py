"""Fixtures for fault tests: worker processes running ``redisaq worker`` with the recorder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts ``redisaq worker`` processes and makes sure none outlives the test."""

    def __init__(self, record_file: Path) -> None:
        self.record_file = record_file
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        redis_url: str,
        topic: str,
        *extra: str,
        delay: float = 0.0,
        name: str | None = None,
        clock_offset: float = 0.0,
    ) -> subprocess.Popen[bytes]:
        """Start a worker; ``clock_offset``: its wall clock is off by that many seconds."""
        module = "tests.faults.skewed" if clock_offset else "redisaq_core.cli.main"
        args = [
            sys.executable, "-m", module, "-v",
            "worker", "tests.faults.recorder:handle",
            "--redis-url", redis_url, "--topic", topic,
            "--heartbeat-interval", "0.3", "--heartbeat-ttl", "1.2", "--poll-interval", "0.2",
            "--retry-backoff", "0.05", *extra,
        ]  # fmt: skip
        if name:
            args += ["--name", name]
        env = dict(os.environ, RECORD_FILE=str(self.record_file), HANDLER_DELAY=str(delay))
        if clock_offset:
            env["CLOCK_OFFSET"] = str(clock_offset)
        log = open(self.record_file.with_suffix(f".{len(self.procs)}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
