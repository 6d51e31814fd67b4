#!/usr/bin/env bash
# Run commands at the same time, each given as "NAME::COMMAND": the first prints as it goes,
# under "== NAME"; each other one writes to a log of its own, printed whole under its name once
# every command has ended. Fails if any failed. The test suites run this way mostly wait
# (heartbeats, timeouts), so together they take about as long as the slowest of them alone;
# their tests marked `alone` take turns, holding the lock file $REDISAQ_TEST_LOCK (made here;
# tests/conftest.py).
set -u
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export REDISAQ_TEST_LOCK="$dir/alone.lock"
names=()
pids=()
for spec in "$@"; do
    names+=("${spec%%::*}")
    if [ ${#pids[@]} -eq 0 ]; then
        echo "== ${names[0]}"
        bash -c "${spec#*::}" &
    else
        bash -c "${spec#*::}" >"$dir/${#pids[@]}.log" 2>&1 &
    fi
    pids+=($!)
done
failed=()
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
done
for i in "${!names[@]}"; do
    if [ "$i" -gt 0 ]; then
        echo "== ${names[$i]}"
        cat "$dir/$i.log"
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed: ${failed[*]}"
    exit 1
fi
