"""``redisaq demo``: a producer, three consumers and a rebalance, told step by step.

Everything runs in this process against a server (Valkey by default) started for the demo
(and stopped at the end, on Ctrl-C too): a producer keeps sending to a
6-partition topic while three consumers of one group split the partitions;
one consumer then stops and the other two take its partitions over. The demo
ends with a summary and checks that every message sent was processed at least
once (exit 0), or says what is missing (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..consumer import Callback, Consumer
from ..embedded import EmbeddedRedis
from ..message import Message
from ..producer import Producer
from .common import EXIT_FAILED, EXIT_OK

__all__ = ["add_commands", "run_demo"]

TOPIC = "orders"
GROUP = "billing"
PARTITIONS = 6
NAMES = ("alice", "bob", "carol")
HEARTBEAT = 0.5  # seconds; short so that rebalances take about a second
SEND_INTERVAL = 0.02  # seconds between two messages (pacing only)
STEP_TIMEOUT = 10.0  # the longest any step may take before the demo fails
EXIT_INTERRUPTED = 130


class DemoFailed(Exception):
    """A step did not complete in time, or a consumer failed."""


def add_commands(sub: Any) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="show a producer, three consumers and a rebalance on a local server",
        description="Start a server, a producer and three consumers of one group on a "
        f"{PARTITIONS}-partition topic; stop one consumer to show the rebalance; print a "
        "summary. Needs no Redis of your own (the Redis options are ignored).",
    )
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace | None = None) -> int:
    """Run the demo and return its exit code (0: every message processed, 1: not, 130: Ctrl-C)."""
    started = time.monotonic()
    out = _Printer(started)
    print(
        f"redisaq demo: 1 producer, {len(NAMES)} consumers in group {GROUP!r}, "
        f"topic {TOPIC!r} with {PARTITIONS} partitions",
        flush=True,
    )
    try:
        with EmbeddedRedis() as server:
            pid, what = server.pid, str(server.server).split(" (")[0]
            out.event(f"started {what} (pid {pid}) at {server.url}")
            demo = _Demo(server.url, out)
            code = asyncio.run(demo.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; server stopped", flush=True)
        return EXIT_INTERRUPTED
    out.event(f"{what} (pid {pid}) stopped")
    out.line(demo.verdict)
    return code


class _Printer:
    """Lines on stdout, events stamped with the seconds since the demo started."""

    def __init__(self, started: float) -> None:
        self.started = started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def event(self, text: str) -> None:
        print(f"[{self.elapsed():5.1f}s] {text}", flush=True)

    def heading(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)


def _numbers(partitions: Sequence[int]) -> str:
    return ", ".join(str(p) for p in sorted(partitions)) or "none"


class _Demo:
    """The demo's state: the producer, the consumers, and what each one did."""

    def __init__(self, url: str, out: _Printer) -> None:
        self.url = url
        self.out = out
        self.sent: list[int] = []
        self.deliveries: Counter[int] = Counter()
        self.per_consumer: Counter[str] = Counter()
        self.per_partition: dict[int, Counter[str]] = {p: Counter() for p in range(PARTITIONS)}
        self.consumers: dict[str, Consumer] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.producer = Producer(TOPIC, redis_url=url, init_partitions=PARTITIONS)
        self.producing = asyncio.Event()
        self.producer_task: asyncio.Task[None] | None = None
        self.verdict = ""

    # ---- the story ------------------------------------------------------------------

    async def run(self) -> int:
        """Tell the story; return the exit code."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        if main is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, main.cancel)
        try:
            return await self._story()
        except DemoFailed as exc:
            self.verdict = f"\nFAILED: {exc}"
            return EXIT_FAILED
        except asyncio.TimeoutError:
            self.verdict = f"\nFAILED: a step took longer than {STEP_TIMEOUT:.0f}s"
            return EXIT_FAILED
        finally:
            await self._shutdown()

    async def _story(self) -> int:
        out = self.out
        await self.producer.connect()
        self.producing.set()
        self.producer_task = asyncio.create_task(self._produce(), name="demo-producer")
        out.event(
            f"producer: topic {TOPIC!r} has {self.producer.partitions} partitions; "
            f"sending one order every {SEND_INTERVAL * 1000:.0f} ms, spread over the partitions"
        )

        out.heading(f"1. Three consumers join group {GROUP!r} one after another")
        out.line(f"   (heartbeat every {HEARTBEAT} s; '+' = partitions assigned, '-' = given up)")
        for count, name in enumerate(NAMES, start=1):
            out.event(f"{name} joins")
            self._start_consumer(name)
            took = await self._until(
                functools.partial(self._balanced, NAMES[:count]),
                f"{count} consumer(s) to share the {PARTITIONS} partitions",
            )
            out.event(f"balanced over {count} consumer(s) in {took:.1f}s")

        out.heading("2. Who owns which partition")
        self._print_owners(NAMES)
        before = {n: list(self.consumers[n].assigned_partitions) for n in NAMES}
        base = Counter(self.per_consumer)
        await self._until(
            lambda: all(self.per_consumer[n] - base[n] >= 20 for n in NAMES),
            "every consumer to handle 20 more messages",
        )
        out.event(f"traffic flowing: {self._progress()}")

        leaving, survivors = NAMES[-1], NAMES[:-1]
        moved = before[leaving]
        out.heading(f"3. {leaving} stops: a rebalance gives partitions {_numbers(moved)} away")
        out.event(f"{leaving}.stop(): finishes its messages, releases its partitions, leaves")
        await self.consumers[leaving].stop(timeout=5)
        await asyncio.wait_for(self.tasks[leaving], STEP_TIMEOUT)
        out.event(f"{leaving} has stopped; the producer keeps sending")
        took = await self._until(
            lambda: self._balanced(survivors),
            f"{', '.join(survivors)} to take over partitions {_numbers(moved)}",
        )
        out.event(f"rebalance done {took:.1f}s after {leaving} stopped")
        self._print_owners(survivors, before)
        owner = {p: n for n in survivors for p in self.consumers[n].assigned_partitions}
        handled = {p: self.per_partition[p][owner[p]] for p in moved}
        await self._until(
            lambda: all(self.per_partition[p][owner[p]] - handled[p] >= 5 for p in moved),
            f"the new owners to handle messages of partitions {_numbers(moved)}",
        )
        out.event(f"new owners are handling partitions {_numbers(moved)}: {self._progress()}")

        out.heading("4. The producer stops; the consumers finish what is left")
        self.producing.clear()
        await asyncio.wait_for(self.producer_task, STEP_TIMEOUT)
        out.event(f"producer stopped after {len(self.sent)} messages")
        with contextlib.suppress(DemoFailed):
            took = await self._until(
                lambda: not self._missing(), "every sent message to be processed"
            )
            out.event(f"all messages processed ({took:.1f}s after the producer stopped)")
        for name in survivors:
            await self.consumers[name].stop(timeout=5)
        out.event("consumers stopped")
        return self._summary()

    def _summary(self) -> int:
        out = self.out
        missing = self._missing()
        total = sum(self.deliveries.values())
        again = total - len(self.deliveries)
        out.heading("Summary")
        out.line(f"   sent        {len(self.sent)}")
        out.line(
            f"   processed   {len(self.deliveries)} distinct messages, {total} deliveries"
            + (f" ({again} delivered again after a rebalance)" if again else "")
        )
        out.line("   per consumer:")
        for name in NAMES:
            consumer = self.consumers[name]
            note = f"(acknowledged {consumer.stats.handled}"
            note += ", stopped in step 3)" if name == NAMES[-1] else ")"
            out.line(f"     {name:<8}{self.per_consumer[name]:>6}   {note}")
        out.line("   per partition (handled by):")
        for p in range(PARTITIONS):
            by = self.per_partition[p]
            who = ", ".join(f"{n} {c}" for n, c in sorted(by.items()))
            out.line(f"     {p:<8}{sum(by.values()):>6}   {who}")
        if missing:
            shown = ", ".join(str(n) for n in missing[:10])
            self.verdict = (
                f"\nFAILED: {len(missing)} of {len(self.sent)} sent messages were never "
                f"processed (orders {shown}{', ...' if len(missing) > 10 else ''})"
            )
            return EXIT_FAILED
        self.verdict = (
            f"\nOK: all {len(self.sent)} sent messages were processed at least once "
            f"(in {self.out.elapsed():.1f}s)"
        )
        return EXIT_OK

    # ---- the parts ------------------------------------------------------------------

    async def _produce(self) -> None:
        n = 0
        while self.producing.is_set():
            await self.producer.enqueue({"order": n, "amount": 10 + n % 90})
            self.sent.append(n)
            n += 1
            await asyncio.sleep(SEND_INTERVAL)

    def _start_consumer(self, name: str) -> None:
        def hook(sign: str) -> Callable[[list[int]], None]:
            def show(partitions: list[int]) -> None:
                self.out.event(f"  {name:<6} {sign} partitions {_numbers(partitions)}")

            return show

        consumer = Consumer(
            TOPIC,
            group_name=GROUP,
            consumer_name=name,
            redis_url=self.url,
            heartbeat_interval=HEARTBEAT,
            poll_interval=HEARTBEAT / 2,
            shutdown_timeout=5.0,
            on_assign=hook("+"),
            on_revoke=hook("-"),
        )
        self.consumers[name] = consumer
        self.tasks[name] = asyncio.create_task(
            consumer.process(self._handler(name)), name=f"demo-{name}"
        )

    def _handler(self, name: str) -> Callback:
        async def handle(message: Message) -> None:
            order = int(message.payload["order"])
            self.deliveries[order] += 1
            self.per_consumer[name] += 1
            partition = message.partition if message.partition is not None else -1
            self.per_partition.setdefault(partition, Counter())[name] += 1

        return handle

    def _balanced(self, names: Sequence[str]) -> bool:
        """Whether ``names`` own every partition, each exactly once, with loads within one."""
        owned = [self.consumers[n].assigned_partitions for n in names]
        loads = [len(o) for o in owned]
        every = {p for o in owned for p in o}
        return (
            every == set(range(PARTITIONS))
            and sum(loads) == PARTITIONS
            and max(loads) - min(loads) <= 1
        )

    def _print_owners(
        self, names: Sequence[str], before: dict[str, list[int]] | None = None
    ) -> None:
        for name in names:
            mine = self.consumers[name].assigned_partitions
            note = ""
            if before is not None:
                gained = sorted(set(mine) - set(before[name]))
                if gained:
                    previous = {p: n for n, ps in before.items() for p in ps}
                    note = "   gained " + ", ".join(f"{p} (from {previous[p]})" for p in gained)
            self.out.line(f"   {name:<8} owns partitions {_numbers(mine)}{note}")

    def _progress(self) -> str:
        done = ", ".join(f"{n} {self.per_consumer[n]}" for n in NAMES)
        return f"{len(self.sent)} sent, {len(self.deliveries)} processed ({done})"

    def _missing(self) -> list[int]:
        return [n for n in self.sent if n not in self.deliveries]

    async def _until(self, condition: Callable[[], bool], what: str) -> float:
        """Wait until ``condition()`` holds; return the seconds it took (``DemoFailed`` if late)."""
        start = time.monotonic()
        deadline = start + STEP_TIMEOUT
        while not condition():
            for name, task in self.tasks.items():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise DemoFailed(f"consumer {name} failed: {task.exception()!r}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {STEP_TIMEOUT:.0f}s waiting for {what}")
            await asyncio.sleep(0.05)
        return time.monotonic() - start

    async def _shutdown(self) -> None:
        """Stop the producer and every consumer, and close them (also after a failure)."""
        self.producing.clear()
        if self.producer_task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self.producer_task, 5)
        await asyncio.gather(
            *(c.stop(timeout=5) for c in self.consumers.values()), return_exceptions=True
        )
        for task in self.tasks.values():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
        for component in (*self.consumers.values(), self.producer):
            with contextlib.suppress(Exception):
                await component.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
