"""``redisaq worker --processes N``: a supervisor and N consumer processes, real signals.

The handler is ``tests/faults/recorder.py`` (one line per call, with the pid
of the process that made it), or a module written into the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from redisaq_core import Producer
from redisaq_core.cli.main import build_parser, main
from redisaq_core.cli.supervisor import RESET_AFTER, Backoff
from redisaq_core.cli.worker import child_command
from tests.helpers import eventually, wait_sync

pytestmark = [pytest.mark.slow, pytest.mark.alone]

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--heartbeat-interval", "0.3", "--heartbeat-ttl", "1.2", "--poll-interval", "0.2",
        "--shutdown-timeout", "5"]  # fmt: skip


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def children_of(pid: int) -> list[int]:
    """Process ids of the children of ``pid`` (Linux ``/proc``)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in found if alive(p)]


class Workers:
    """Starts ``redisaq worker --processes`` supervisors; kills whatever is left at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.record_file = tmp_path / "records.txt"
        self.record_file.touch()
        self.stderr = tmp_path / "stderr.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.seen: set[int] = set()

    def start(
        self,
        redis_url: str,
        topic: str,
        *extra: str,
        handler: str = "tests.faults.recorder:handle",
        delay: float = 0.0,
    ) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "redisaq_core.cli.main", "-v", "worker", handler,
                "--redis-url", redis_url, "--topic", topic, *FAST, *extra]  # fmt: skip
        env = dict(
            os.environ,
            RECORD_FILE=str(self.record_file),
            HANDLER_DELAY=str(delay),
            PYTHONPATH=os.pathsep.join([str(self.dir), str(ROOT)]),
        )
        with open(self.stderr, "ab") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def children(self, proc: subprocess.Popen[bytes], count: int) -> list[int]:
        """Wait until ``proc`` has ``count`` children and return their pids."""
        pids: list[int] = wait_sync(
            lambda: (lambda found: found if len(found) == count else None)(children_of(proc.pid)),
            timeout=10,
            message=f"{count} children",
        )
        self.seen.update(pids)
        return pids

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    async def settled(self, count: int) -> None:
        """Wait until ``count`` consumers have been assigned partitions (the group is shared)."""
        await eventually(
            lambda: (
                len(set(re.findall(r"consumer (\S+): assigned partitions", self.log()))) >= count
            ),
            message=f"{count} consumers with partitions",
        )

    def records(self) -> list[list[str]]:
        return [line.split() for line in self.record_file.read_text().splitlines()]

    def pids(self, kind: str = "start") -> set[int]:
        """Pids of the processes that recorded ``kind`` lines."""
        return {int(r[1]) for r in self.records() if r[0] == kind}

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.seen.update(children_of(proc.pid))
                proc.kill()
            proc.wait(timeout=10)
        for pid in self.seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    try:
        yield w
    finally:
        w.stop_all()


async def create_topic(redis_url: str, topic: str) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4):
        pass


async def produce(redis_url: str, topic: str, count: int, start: int = 0) -> None:
    async with Producer(topic, redis_url=redis_url, init_partitions=4) as producer:
        await producer.batch_enqueue(
            [{"n": i, "k": f"k{i}"} for i in range(start, start + count)], partition_key="k"
        )


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, workers: Workers) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout}s:\n{workers.log()[-3000:]}") from None


# ---- the command line ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "257", "two"])
def test_processes_out_of_range_is_a_usage_error_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["worker", "m:f", "--topic", "t", "--processes", value])
    assert exc.value.code == 2
    assert "argument --processes" in capsys.readouterr().err


def test_bad_settings_are_refused_before_any_process_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--redis-url", "redis://127.0.0.1:1/0", "worker", "no_such_module_x:handle",
            "--topic", "t", "--processes", "2"]  # fmt: skip
    assert main([*base, "--static"]) == 2
    assert "--static needs --name" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == 1
    assert "batch_size" in capsys.readouterr().err
    assert main([*base, "--restart-delay", "5", "--restart-delay-max", "1"]) == 2
    assert "--restart-delay-max" in capsys.readouterr().err
    assert main([*base[:3], "nocolon", *base[4:]]) == 2
    assert "module:function" in capsys.readouterr().err


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (".relative:handle", "handler module '.relative' (in '.relative:handle') is not a module"),
        ("pkg..mod:handle", "handler module 'pkg..mod' (in 'pkg..mod:handle') is not a module"),
        ("asyncio:sleep:extra", "handler function 'sleep:extra' (in 'asyncio:sleep:extra') is"),
        ("asyncio:1sleep", "handler function '1sleep' (in 'asyncio:1sleep') is not an identif"),
    ],
)
def test_a_handler_that_is_no_module_and_function_name_is_a_usage_error(
    handler: str, error: str, processes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--redis-url", "redis://127.0.0.1:1/0", "worker", handler, "--topic", "t",
                 "--processes", processes])  # fmt: skip
    assert code == 2
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--topic", "a b", "the name must not contain braces or whitespace, got 'a b'"),
        ("--topic", "{t}", "the name must not contain braces or whitespace, got '{t}'"),
        ("--group", "g\tx", "the name must not contain braces or whitespace, got 'g\\tx'"),
        ("--name", "", "the name must be a non-empty string, got ''"),
    ],
)
def test_a_bad_topic_group_or_name_is_a_usage_error_naming_the_flag(
    flag: str, value: str, error: str, processes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = [text for pair in {"--topic": "t", flag: value}.items() for text in pair]
    with pytest.raises(SystemExit) as exc:
        main(["--redis-url", "redis://127.0.0.1:1/0", "worker", "asyncio:sleep", *options,
              "--processes", processes])  # fmt: skip
    assert exc.value.code == 2
    assert f"argument {flag}: {error}" in capsys.readouterr().err


# Every option of `redisaq worker` and what a supervised process gets of it: a new option
# must be added here, and to worker._PASSED_ON if the processes need it.
NOT_PASSED_ON = {"processes", "restart_delay", "restart_delay_max", "supervisor_fd"}
PASSED_ON = {"handler", "topic", "group", "name", "batch", "batch_size", "concurrency",
             "heartbeat_interval", "heartbeat_ttl", "max_deliveries", "retry_backoff",
             "poll_interval", "shutdown_timeout", "static", "start"}  # fmt: skip


def test_every_option_reaches_the_processes() -> None:
    parser = build_parser()
    given = parser.parse_args(
        ["-vv", "--redis-url", "redis://h:1/0", "worker", "m:f", "--topic", "orders",
         "--group", "g", "--name", "w", "--batch", "--batch-size", "7", "--concurrency", "3",
         "--heartbeat-interval", "0.25", "--heartbeat-ttl", "2.5", "--max-deliveries", "9",
         "--retry-backoff", "0.125", "--poll-interval", "0.3", "--shutdown-timeout", "12.5",
         "--static", "--start", "latest", "--processes", "4", "--restart-delay", "0.5"]
    )  # fmt: skip
    globals_only = vars(parser.parse_args(["server"]))
    options = set(vars(given)) - set(globals_only)
    assert options == PASSED_ON | NOT_PASSED_ON
    command = child_command(given, 3)
    assert command[:3] == [sys.executable, "-m", "redisaq_core.cli.main"]
    assert "redis://h:1/0" not in command  # the URL goes in the environment
    child = parser.parse_args(command[3:])
    assert child.verbose == 2
    for option in PASSED_ON - {"name"}:
        assert getattr(child, option) == getattr(given, option), option
    assert child.name == "w-3"
    assert child.processes == 1


def test_restart_delays_double_up_to_the_cap_and_start_over_after_a_long_run() -> None:
    backoff = Backoff(initial=1.0, cap=8.0)
    assert [backoff.next_delay(0.5) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff.next_delay(RESET_AFTER) == 1.0
    assert backoff.next_delay(RESET_AFTER - 1) == 2.0
    long_cap = Backoff(initial=1.0, cap=2 * RESET_AFTER)
    assert long_cap.reset_after == 2 * RESET_AFTER
    for _ in range(10):
        long_cap.next_delay(RESET_AFTER)
    assert long_cap.next_delay(0) == 2 * RESET_AFTER


# ---- real processes --------------------------------------------------------------------


async def test_one_process_is_the_worker_itself(
    redis_url: str, topic: str, workers: Workers
) -> None:
    proc = workers.start(redis_url, topic, "--processes", "1")
    await produce(redis_url, topic, 8)
    await eventually(lambda: len(workers.pids("end")) > 0, message="a message handled")
    assert workers.pids() == {proc.pid}
    assert children_of(proc.pid) == []
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10, workers) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_drains_every_process(
    redis_url: str, topic: str, workers: Workers, sig: signal.Signals
) -> None:
    await create_topic(redis_url, topic)
    proc = workers.start(redis_url, topic, "--processes", "2", "--batch-size", "1", delay=0.2)
    pids = workers.children(proc, 2)
    await workers.settled(2)
    await produce(redis_url, topic, 200)
    await eventually(lambda: workers.pids() == set(pids), message="both processes handling")
    proc.send_signal(sig)
    assert wait_exit(proc, 15, workers) == 0, workers.log()[-3000:]
    wait_sync(lambda: not any(alive(p) for p in pids), timeout=5, message="children gone")
    started = {(r[2], r[3]) for r in workers.records() if r[0] == "start"}
    ended = {(r[2], r[3]) for r in workers.records() if r[0] == "end"}
    assert started == ended  # every handler that started finished
    log = workers.log()
    assert f"received {sig.name}: stopping 2 worker(s) gracefully" in log
    assert "restarting it in" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_repeated_once_the_processes_stopped_leaves_the_exit_status_0(
    redis_url: str, topic: str, workers: Workers, sig: signal.Signals
) -> None:
    # A process manager sending its signal again, or a second Ctrl-C: once the last child
    # was reaped, the supervisor gave the signals back to their default action while it
    # finished, and a repeat killed it (exit status -15 or -2, though every child drained).
    await create_topic(redis_url, topic)
    proc = workers.start(redis_url, topic, "--processes", "2")
    pids = workers.children(proc, 2)
    await workers.settled(2)
    proc.send_signal(sig)
    wait_sync(lambda: not any(alive(p) for p in pids), timeout=15, message="children gone")
    while proc.poll() is None:  # again and again until it is gone
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        time.sleep(0.002)
    assert wait_exit(proc, 5, workers) == 0, workers.log()[-3000:]


async def test_a_second_signal_stops_the_processes_at_once(
    redis_url: str, topic: str, workers: Workers
) -> None:
    await create_topic(redis_url, topic)
    proc = workers.start(redis_url, topic, "--processes", "2", "--shutdown-timeout", "60",
                         delay=30)  # fmt: skip
    pids = workers.children(proc, 2)
    await workers.settled(2)
    await produce(redis_url, topic, 8)
    await eventually(lambda: workers.pids() == set(pids), message="both processes handling")
    proc.send_signal(signal.SIGTERM)
    await eventually(
        lambda: workers.log().count("received SIGTERM: stopping gracefully") == 2,
        message="both processes told",
    )
    assert proc.poll() is None  # waiting for the handlers, which take 30 s
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10, workers) == 0, workers.log()[-3000:]
    assert "received SIGTERM again: stopping the workers now" in workers.log()
    assert workers.pids("end") == set()  # the handlers were cancelled


async def test_a_crashed_process_is_restarted(redis_url: str, topic: str, workers: Workers) -> None:
    await create_topic(redis_url, topic)
    proc = workers.start(redis_url, topic, "--processes", "2", "--restart-delay", "0.1")
    first = workers.children(proc, 2)
    await workers.settled(2)
    await produce(redis_url, topic, 20)
    await eventually(lambda: workers.pids() == set(first), message="both processes handling")
    os.kill(first[0], signal.SIGKILL)
    wait_sync(lambda: not alive(first[0]), timeout=5)
    now = await eventually(
        lambda: (lambda pids: pids if len(pids) == 2 and first[0] not in pids else None)(
            children_of(proc.pid)
        ),
        message="a new process in place of the killed one",
    )
    workers.seen.update(now)
    (new,) = set(now) - set(first)
    assert re.search(
        rf"worker \d \(pid {first[0]}\) was killed by SIGKILL after [\d.]+s; "
        r"restarting it in 0\.10s",
        workers.log(),
    ), workers.log()[-3000:]
    sent = 20

    async def new_one_handles() -> bool:
        # More messages until the new process has partitions of its own and handles some:
        # the survivor may hold every partition for a while (the killed one's TTL first).
        nonlocal sent
        if new in workers.pids("end"):
            return True
        await produce(redis_url, topic, 8, start=sent)
        sent += 8
        return False

    await eventually(new_one_handles, interval=0.2, message="the new process handling")
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 15, workers) == 0, workers.log()[-3000:]


CRASHING = """
import os, threading
threading.Timer(0.05, os._exit, (3,)).start()

async def handle(message):
    pass
"""


async def test_restart_delays_grow_while_a_process_keeps_crashing(
    redis_url: str, topic: str, workers: Workers
) -> None:
    (workers.dir / "crashing.py").write_text(CRASHING)
    proc = workers.start(
        redis_url, topic, "--processes", "2", "--restart-delay", "0.1",
        "--restart-delay-max", "0.4", handler="crashing:handle",
    )  # fmt: skip

    def delays(slot: int) -> list[str]:
        return re.findall(
            rf"worker {slot} \(pid \d+\) exited with status 3 after [\d.]+s; "
            r"restarting it in ([\d.]+)s",
            workers.log(),
        )

    await eventually(lambda: len(delays(0)) >= 4, timeout=20, message="four restarts")
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10, workers) in (0, 1)
    assert delays(0)[:4] == ["0.10", "0.20", "0.40", "0.40"]


EXITING = """
import os, threading
threading.Timer(0.05, os._exit, ({code},)).start()

async def handle(message):
    pass
"""


@pytest.mark.parametrize("code", [0, 3])
async def test_a_process_down_after_exiting_unasked_makes_the_exit_status_1(
    redis_url: str, topic: str, workers: Workers, code: int
) -> None:
    # Even with status 0: the supervisor did not ask it to stop.
    (workers.dir / "exiting.py").write_text(EXITING.format(code=code))
    proc = workers.start(redis_url, topic, "--processes", "2", "--restart-delay", "30",
                         handler="exiting:handle")  # fmt: skip
    down = rf"worker \d \(pid \d+\) exited with status {code} after [\d.]+s; restarting it in 30"
    await eventually(lambda: len(re.findall(down, workers.log())) == 2,
                     message="both processes down, waiting to be restarted")  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10, workers) == 1, workers.log()[-3000:]


RAISING = """
raise RuntimeError("this module cannot be imported")
"""
EXITS_ON_IMPORT = """
import sys
sys.exit("exits_on_import: REQUIRED_SETTING is not set")
"""
NOT_ASYNC = """
def handle(message):
    pass
"""


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        ("no_such_module_q:handle", "cannot import handler module 'no_such_module_q'"),
        ("raising:handle", "RuntimeError: this module cannot be imported"),
        ("not_async:handle", "'not_async:handle' is not an async function"),
        ("exits_on_import:handle", "'exits_on_import' called sys.exit('exits_on_import: REQ"),
    ],
)
async def test_a_handler_that_cannot_load_ends_the_supervisor_without_restarts(
    redis_url: str, topic: str, workers: Workers, handler: str, error: str
) -> None:
    (workers.dir / "raising.py").write_text(RAISING)
    (workers.dir / "not_async.py").write_text(NOT_ASYNC)
    (workers.dir / "exits_on_import.py").write_text(EXITS_ON_IMPORT)
    proc = workers.start(redis_url, topic, "--processes", "2", "--restart-delay", "0.1",
                         handler=handler)  # fmt: skip
    assert wait_exit(proc, 15, workers) == 1
    log = workers.log()
    assert error in log
    assert log.count(error) <= 2  # once per process at most: none was started again
    assert "could not load its handler or start its consumer" in log
    assert "restarting it in" not in log


BLOCKING = """
import os, time
from pathlib import Path

async def handle(message):
    with open(os.environ["RECORD_FILE"], "a") as f:
        f.write(f"start {os.getpid()} - - - - -\\n")
    time.sleep(60)  # blocks the event loop: the process cannot act on SIGTERM
"""


async def _one_stuck(
    redis_url: str, topic: str, workers: Workers
) -> tuple[subprocess.Popen[bytes], list[int], int]:
    """Two processes, one of them in a handler that blocks its event loop: (supervisor,
    processes, the stuck one). A process may take --shutdown-timeout 0.3 + --heartbeat-ttl
    0.8 seconds to stop."""
    (workers.dir / "blocking.py").write_text(BLOCKING)
    proc = workers.start(
        redis_url, topic, "--processes", "2", "--shutdown-timeout", "0.3",
        "--heartbeat-interval", "0.2", "--heartbeat-ttl", "0.8", handler="blocking:handle",
    )  # fmt: skip
    pids = workers.children(proc, 2)
    await produce(redis_url, topic, 1)
    (stuck,) = await eventually(lambda: workers.pids(), message="the handler running")
    return proc, pids, stuck


async def test_a_process_that_does_not_stop_in_time_is_killed(
    redis_url: str, topic: str, workers: Workers
) -> None:
    proc, pids, stuck = await _one_stuck(redis_url, topic, workers)
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 10, workers) == 1
    assert not any(alive(p) for p in pids)
    assert re.search(
        rf"pid {stuck}\) still running 1\.1s after the stop: killing it", workers.log()
    )


async def test_the_processes_stop_when_the_supervisor_is_killed(
    redis_url: str, topic: str, workers: Workers
) -> None:
    await create_topic(redis_url, topic)
    proc = workers.start(redis_url, topic, "--processes", "2")
    pids = workers.children(proc, 2)
    await workers.settled(2)
    await produce(redis_url, topic, 8)
    await eventually(lambda: workers.pids() == set(pids), message="both processes handling")
    proc.kill()
    proc.wait(timeout=5)
    wait_sync(lambda: not any(alive(p) for p in pids), timeout=10, message="children gone")
    assert workers.log().count("the supervisor is gone: stopping gracefully") == 2


async def test_a_process_stuck_in_its_handler_ends_when_the_supervisor_is_killed(
    redis_url: str, topic: str, workers: Workers
) -> None:
    # The handler blocks the event loop: the process is ended 0.3 + 0.8 s after it
    # notices, as the supervisor would have killed it.
    proc, pids, stuck = await _one_stuck(redis_url, topic, workers)
    assert stuck in pids
    proc.kill()
    proc.wait(timeout=5)
    wait_sync(lambda: not any(alive(p) for p in pids), timeout=10, message="children gone")
    gone = "the supervisor is gone: stopping gracefully, exiting in 1.1s at the latest"
    assert workers.log().count(gone) == 2


@pytest.mark.timeout(90)
def test_the_processes_benchmark_runs_and_reports_each_count() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.processes", "--n", "3000", "--repeat", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [r["processes"] for r in report["results"]] == [1, 2]
    for result in report["results"]:
        assert result["rate"] > 0
    assert report["environment"]["redis_server"]
