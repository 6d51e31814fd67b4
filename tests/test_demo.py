"""``redisaq demo`` and ``examples/basic`` run as real processes."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "basic"


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Interrupt ``proc`` (so that it cleans up), then kill it if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_shows_the_rebalance_and_the_summary() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisaq_core.cli.main", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        pytest.fail(f"demo still running after 60s:\n{out}\n{err}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert "rebalance done" in out
    assert "gained" in out
    assert "Summary" in out
    assert "per consumer" in out and "per partition" in out
    assert re.search(r"OK: all \d+ sent messages were processed at least once", out)
    elapsed = re.search(r"at least once \(in ([\d.]+)s\)", out)
    assert elapsed and float(elapsed.group(1)) < 30
    server = re.search(r"started (?:Valkey|Redis) [\d.]+ \(pid (\d+)\)", out)
    assert server is not None
    assert not _alive(int(server.group(1))), "the demo left its redis-server running"


class _Lines:
    """The stdout lines of a process, read by a thread, waited on with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._queue.put(line)
        except (OSError, ValueError):  # closed at teardown
            pass
        self._queue.put(None)

    def wait_for(self, condition: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not condition(self.seen):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out; output so far:\n" + "".join(self.seen))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("process exited; output:\n" + "".join(self.seen))
            self.seen.append(line)
        return self.seen


@pytest.fixture
def run_example(redis_url: str, topic: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``examples/basic/<script>`` on the test's topic; stop every one at the end."""
    procs: list[subprocess.Popen[str]] = []

    def run(script: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / script), *args, "--topic", topic],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "REDIS_URL": redis_url},
        )
        procs.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in procs:
            _stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def _orders(pattern: str) -> Callable[[list[str]], set[int]]:
    """A function collecting the order numbers that ``pattern``'s group lists in the lines."""
    regex = re.compile(pattern)

    def orders(lines: list[str]) -> set[int]:
        found: set[int] = set()
        for line in lines:
            if m := regex.match(line):
                found |= {int(n) for n in m.group(1).split(", ")}
        return found

    return orders


def test_basic_examples_each_group_gets_every_order(
    run_example: Callable[..., subprocess.Popen[str]],
) -> None:
    count = 12
    consumer = run_example("consumer.py", "alice")
    audit = run_example("second_group.py")
    producer = run_example("producer.py", "--count", str(count), "--interval", "0.01")
    out, _ = producer.communicate(timeout=30)
    assert producer.returncode == 0, out
    assert out.count("sent order") == count

    wanted = set(range(count))
    billing = _orders(r"\[alice\] order (\d+) for ")
    alice = _Lines(consumer)
    lines = alice.wait_for(lambda seen: billing(seen) == wanted, timeout=20)
    assert any("[alice] assigned partitions" in line for line in lines)
    audited = _orders(r"\[audit\] \d+ order\(s\): ([\d, ]+?) \(total")
    _Lines(audit).wait_for(lambda seen: audited(seen) == wanted, timeout=20)

    consumer.send_signal(signal.SIGTERM)
    lines = alice.wait_for(lambda seen: any("stopped after" in x for x in seen), timeout=20)
    assert f"[alice] stopped after {count} orders\n" in lines
    assert consumer.wait(10) == 0
