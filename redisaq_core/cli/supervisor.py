"""``redisaq worker --processes N``: N worker processes under one supervisor.

Each child is a command (``redisaq worker ...``) run in a session of its own,
so that a terminal's Ctrl-C reaches the supervisor only, which forwards it
once. The supervisor appends ``--supervisor-fd FD`` to the command: the read
end of a pipe whose write end only the supervisor holds. When the supervisor
is gone, even killed with SIGKILL, the pipe reports end of file and the child
stops gracefully (:func:`watch_supervisor`), or is ended when the time the
supervisor would have allowed is up, so no worker outlives it.

A child that exits with :data:`EXIT_CANNOT_START` could not load its handler
or build its consumer: it is not restarted, the others are stopped, and the
supervisor exits 1. Any other exit the supervisor did not ask for is a crash:
the child is started again after a delay that doubles with each crash, up to
a cap (:class:`Backoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._tasks import wait_event
from ..signals import Stoppable

__all__ = [
    "EXIT_CANNOT_START",
    "RESET_AFTER",
    "Backoff",
    "Supervisor",
    "watch_supervisor",
]

log = logging.getLogger(__name__)

EXIT_CANNOT_START = 78
"""Exit code of a child that could not load its handler or build its consumer (EX_CONFIG)."""

RESET_AFTER = 60.0
"""Seconds a child must run (or the restart cap, if longer) for its next restart to be quick."""

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class Backoff:
    """Restart delays of one child: ``initial`` seconds, doubling with each crash up to ``cap``.

    A child that ran at least :attr:`reset_after` seconds before it crashed is
    restarted after ``initial`` again. As the reset needs a run as long as the
    cap, a child that keeps crashing is restarted at most about once per
    ``cap`` seconds.
    """

    initial: float
    cap: float
    crashes: int = 0

    @property
    def reset_after(self) -> float:
        """How long a child must have run for the delays to start over."""
        return max(RESET_AFTER, self.cap)

    def next_delay(self, ran_for: float) -> float:
        """The delay before restarting a child that crashed after running ``ran_for`` seconds."""
        if ran_for >= self.reset_after:
            self.crashes = 0
        delay = min(self.cap, self.initial * 2.0 ** min(self.crashes, 64))
        self.crashes += 1
        return delay


def _describe_exit(code: int) -> str:
    """``"exited with status 3"`` or ``"was killed by SIGKILL"``, from a return code."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


class Supervisor:
    """Runs one child process per command, restarts crashed ones, stops them all on a signal.

    ``run()`` returns the exit code: 0 when every child stopped cleanly after a
    SIGTERM/SIGINT to the supervisor; 1 when a child could not start (its
    handler failed to load: nothing is restarted), or when, after the signal,
    a child exited with an error, had to be killed after ``grace`` seconds, or
    was down after a crash (any exit not asked for, status 0 too), waiting to
    be restarted.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        *,
        grace: float,
        restart_delay: float = 1.0,
        restart_delay_max: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.commands = [list(command) for command in commands]
        self.grace = grace
        self.restart_delay = restart_delay
        self.restart_delay_max = restart_delay_max
        self.env = dict(env) if env is not None else None
        count = len(self.commands)
        self._procs: list[asyncio.subprocess.Process | None] = [None] * count
        self._last: list[int | None] = [None] * count
        self._down: set[int] = set()  # slots whose child exited unasked, not started again
        self._sent: set[int] = set()
        self._signal: signal.Signals | None = None
        self._cannot_start: int | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the children running now."""
        return [proc.pid for proc in self._procs if proc is not None]

    async def run(self) -> int:
        """Start the children and keep them running until a signal; return the exit code.

        Once stopping, the stop signals stay ignored in this process: a repeat must not
        kill it as it finishes.
        """
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        slots = [asyncio.create_task(self._keep(slot)) for slot in range(len(self.commands))]
        try:
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait([stop, *slots], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not self._stopping.is_set():  # a slot failed: stop the others
                self._stop(signal.SIGTERM)
            _, stragglers = await asyncio.wait(slots, timeout=self.grace)
            if stragglers:
                self._kill_stragglers()
                await asyncio.wait(stragglers)
            for task in slots:
                task.result()
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
                if self._stopping.is_set():  # stopping already: a repeat must not kill it now
                    signal.signal(sig, signal.SIG_IGN)
            for task in slots:
                task.cancel()
            for proc in self._procs:
                if proc is not None and proc.returncode is None:
                    proc.kill()
        return self._exit_code()

    def _on_signal(self, sig: signal.Signals) -> None:
        assert self._stopping is not None
        if not self._stopping.is_set():
            log.warning("received %s: stopping %d worker(s) gracefully", sig.name, len(self.pids))
        else:
            log.warning("received %s again: stopping the workers now", sig.name)
        self._stop(sig)

    def _stop(self, sig: signal.Signals) -> None:
        """Forward ``sig`` to every running child; no more restarts."""
        assert self._stopping is not None
        self._stopping.set()
        self._sent.add(int(sig))
        self._signal = sig
        for proc in self._procs:
            if proc is not None:
                _send(proc, sig)

    def _kill_stragglers(self) -> None:
        for slot, proc in enumerate(self._procs):
            if proc is not None and proc.returncode is None:
                log.warning(
                    "worker %d (pid %d) still running %.1fs after the stop: killing it",
                    slot, proc.pid, self.grace,
                )  # fmt: skip
                proc.kill()

    async def _keep(self, slot: int) -> None:
        """Run the child of ``slot`` until the supervisor stops, restarting it after crashes."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.restart_delay, self.restart_delay_max)
        while not self._stopping.is_set():
            proc, pipe = await self._spawn(slot)
            self._down.discard(slot)
            started = loop.time()
            try:
                code = await proc.wait()
            finally:
                os.close(pipe)
            self._procs[slot] = None
            self._last[slot] = code
            if self._stopping.is_set():
                return
            self._down.add(slot)
            if code == EXIT_CANNOT_START:
                self._cannot_start = slot
                sys.stderr.write(
                    f"redisaq: error: worker {slot} (pid {proc.pid}) could not load its handler "
                    "or start its consumer (its error is above); not restarting it, stopping "
                    "the others\n"
                )
                self._stop(signal.SIGTERM)
                return
            ran = loop.time() - started
            delay = backoff.next_delay(ran)
            log.warning(
                "worker %d (pid %d) %s after %.1fs; restarting it in %.2fs",
                slot, proc.pid, _describe_exit(code), ran, delay,
            )  # fmt: skip
            await wait_event(self._stopping, delay)

    async def _spawn(self, slot: int) -> tuple[asyncio.subprocess.Process, int]:
        """Start the child of ``slot``; return it and the write end of its pipe."""
        assert self._stopping is not None
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.commands[slot], "--supervisor-fd", str(read_end),
                stdin=subprocess.DEVNULL, env=self.env, pass_fds=(read_end,),
                start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._procs[slot] = proc
        if self._signal is not None:  # the signal came while the child was being started
            _send(proc, self._signal)
        log.info("worker %d started (pid %d)", slot, proc.pid)
        return proc, write_end

    def _exit_code(self) -> int:
        if self._cannot_start is not None or self._down:
            return 1
        # A child the forwarded signal ended before its own handlers were in place (SIGINT:
        # KeyboardInterrupt, 130) had not joined the group yet: nothing of it was lost.
        clean = {0} | {-sig for sig in self._sent}
        if signal.SIGINT in self._sent:
            clean.add(130)
        return 0 if all(code is None or code in clean for code in self._last) else 1


def _send(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def watch_supervisor(fd: int, component: Stoppable, deadline: float) -> Callable[[], None]:
    """In a child: stop ``component`` gracefully once the supervisor's pipe ``fd`` closes.

    A thread waits on the pipe, as a handler may block the event loop; once
    the supervisor is gone it asks the loop to stop ``component`` and ends the
    process (exit status 1) if it is still running ``deadline`` seconds later,
    the time the supervisor itself would have allowed. Call it from inside the
    running event loop; returns an uninstaller.
    """
    loop = asyncio.get_running_loop()
    os.set_inheritable(fd, False)
    os.set_blocking(fd, True)
    uninstalled = threading.Event()
    tasks: set[asyncio.Task[None]] = set()

    def stop() -> None:
        task = loop.create_task(component.stop())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        if uninstalled.is_set():
            return
        log.warning(
            "the supervisor is gone: stopping gracefully, exiting in %.1fs at the latest", deadline
        )
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
            loop.call_soon_threadsafe(stop)
        time.sleep(deadline)
        os._exit(1)

    threading.Thread(target=watch, name="redisaq-supervisor-watch", daemon=True).start()
    return uninstalled.set
