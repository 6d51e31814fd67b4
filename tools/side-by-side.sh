#!/usr/bin/env bash
# Run commands at the same time, each given as "NAME::COMMAND", each into a log of its own;
# once every one has ended, print the logs in the order given, each under "== NAME", and
# fail if any failed. The test suites run this way mostly wait (heartbeats, timeouts), so
# together they take about as long as the slowest of them alone; their tests marked `alone`
# take turns, holding the lock file $REDISAQ_TEST_LOCK (made here; tests/conftest.py).
set -u
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export REDISAQ_TEST_LOCK="$dir/alone.lock"
names=()
pids=()
for spec in "$@"; do
    names+=("${spec%%::*}")
    bash -c "${spec#*::}" >"$dir/${#pids[@]}.log" 2>&1 &
    pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
done
for i in "${!names[@]}"; do
    echo "== ${names[$i]}"
    cat "$dir/$i.log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed: ${failed[*]}"
    exit 1
fi
