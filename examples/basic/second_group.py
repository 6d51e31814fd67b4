"""A second consumer group on the same topic: it gets every order too.

    python second_group.py

The ``billing`` consumers split the orders between them; this ``audit``
group is independent of them and sees each order once more. A new group
starts at the earliest entry, so it also gets the orders sent before it
started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from redisaq_core import Consumer, Message


async def main(args: argparse.Namespace) -> None:
    total = 0

    async def audit(messages: list[Message]) -> None:
        nonlocal total
        total += len(messages)
        orders = ", ".join(str(m.payload["order"]) for m in messages)
        print(f"[audit] {len(messages)} order(s): {orders} (total {total})", flush=True)

    consumer = Consumer(
        args.topic, group_name="audit", consumer_name="auditor", redis_url=args.redis_url
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(consumer.stop()))
    async with consumer:
        await consumer.process_batch(audit)
    print(f"[audit] stopped after {total} orders", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--topic", default="orders")
    asyncio.run(main(parser.parse_args()))
