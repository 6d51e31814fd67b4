"""Throughput, latency and idle-cost benchmarks of redisaq-core beside raw redis-py.

Run ``python -m benchmarks [--json] [--n N]``: it starts its own embedded
redis-server, measures every case against raw redis-py doing the same Redis
commands in the same run, prints a table of rates and ratios, and stops the
server. See ``benchmarks/README.md`` for the cases and the latest figures.
"""
