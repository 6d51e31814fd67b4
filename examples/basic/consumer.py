"""Handle orders as one member of a consumer group.

    python consumer.py alice
    python consumer.py bob        # in another terminal: the two split the partitions

Stop it with Ctrl-C: it leaves the group at once and the others take over
its partitions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from redisaq_core import Consumer, Message


async def main(args: argparse.Namespace) -> None:
    name = args.name

    async def handle(message: Message) -> None:
        order = message.payload
        print(
            f"[{name}] order {order['order']} for {order['customer']} "
            f"(partition {message.partition}, id {message.msg_id})",
            flush=True,
        )

    consumer = Consumer(
        args.topic,
        group_name=args.group,
        consumer_name=name,
        redis_url=args.redis_url,
        heartbeat_interval=1.0,
        on_assign=lambda ps: print(f"[{name}] assigned partitions {ps}", flush=True),
        on_revoke=lambda ps: print(f"[{name}] gave up partitions {ps}", flush=True),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(consumer.stop()))
    print(f"[{name}] joining group {args.group!r} of topic {args.topic!r}", flush=True)
    async with consumer:
        await consumer.process(handle)
    print(f"[{name}] stopped after {consumer.stats.handled} orders", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="this consumer's name, unique in its group")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--group", default="billing")
    asyncio.run(main(parser.parse_args()))
