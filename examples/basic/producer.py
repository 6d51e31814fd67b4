"""Send orders to a topic, one at a time.

    python producer.py --count 20

Orders of one customer go to the same partition (``partition_key="customer"``),
so they are handled in the order they were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

from redisaq_core import Producer


async def main(args: argparse.Namespace) -> None:
    async with Producer(
        args.topic, redis_url=args.redis_url, init_partitions=args.partitions
    ) as producer:
        print(f"sending to topic {args.topic!r} ({producer.partitions} partitions)", flush=True)
        n = 0
        while args.count == 0 or n < args.count:
            order = {"order": n, "customer": f"customer-{n % 5}", "amount": 10 + n % 90}
            msg_id = await producer.enqueue(order, partition_key="customer")
            print(f"sent order {n} for {order['customer']} as {msg_id}", flush=True)
            n += 1
            await asyncio.sleep(args.interval)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    )
    parser.add_argument("--topic", default="orders")
    parser.add_argument("--partitions", type=int, default=3, help="for a new topic")
    parser.add_argument("--count", type=int, default=0, help="orders to send (0: until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between orders")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args()))
