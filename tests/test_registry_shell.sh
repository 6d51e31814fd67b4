#!/bin/bash
# The registry seed's shell-integration example, run by tests/test_cli_registry.py.
# As in the seed, with `redisaq registry` in place of `python cli.py`. The connection and
# key prefix come from REDIS_URL and REDISAQ_KEY_PREFIX; HEARTBEAT_INTERVAL is the loop's
# sleep (10 s in the seed); ./start_vllm.sh is whatever the current directory holds.

SERVICE_ID="vllm-$(hostname)-$$"
# `hostname -i` may print several addresses; keep the first.
HOST=$(hostname -i 2>/dev/null | awk '{print $1}')
HOST=${HOST:-127.0.0.1}
PORT=8000

# Register service
redisaq registry register "$SERVICE_ID" \
    --host "$HOST" \
    --port "$PORT" \
    --service-type inference \
    --metadata '{"model": "llama-3"}'

# Start your service
./start_vllm.sh &
SERVICE_PID=$!

# Heartbeat loop
while kill -0 $SERVICE_PID 2>/dev/null; do
    redisaq registry heartbeat "$SERVICE_ID" --quiet
    sleep "${HEARTBEAT_INTERVAL:-10}"
done

# Cleanup on exit
redisaq registry deregister "$SERVICE_ID"
