"""``python -m benchmarks`` runs end to end with a tiny N and reports every measurement.

No timing assertions: only that each case ran and produced a positive rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "enqueue",
    "enqueue_concurrent",
    "enqueue_idempotent",
    "enqueue_idempotent_concurrent",
    "submit_concurrent",
    "batch_enqueue",
    "process",
    "process_batch",
    "process_batch_no_metrics",
    "jobs_batch",
    "jobs_batch_records",
    "end_to_end",
    "end_to_end_paced",
    "delayed_enqueue",
    "delayed_move",
    "delayed_lateness",
    "idle",
}


pytestmark = pytest.mark.alone  # a benchmark takes every core


@pytest.mark.timeout(90)
def test_benchmarks_run_and_report_every_measurement() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--n",
            "200",
            "--json",
            "--repeat",
            "1",
            "--idle-seconds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    results = {r["key"]: r for r in report["results"]}
    assert set(results) == EXPECTED
    for key, result in results.items():
        if key == "idle":
            # A 1 s window may hold no request: an idle read ends at the leases' deadline.
            assert result["rate"] >= 0 and result["server_commands_per_s"] >= 0
            continue
        assert result["rate"] > 0, key
        assert result["raw_rate"] > 0, key
        assert result["ratio"] > 0, key
    for key in ("end_to_end", "end_to_end_paced"):
        assert results[key]["p50_ms"] > 0
        assert results[key]["p99_ms"] >= results[key]["p50_ms"]
    env = report["environment"]
    for name in ("redis_py", "hiredis", "python", "redis_server"):
        assert env[name]


@pytest.mark.timeout(120)
def test_the_tracing_benchmark_runs_each_mode() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.tracing", "--n", "200", "--repeat", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout)["runs"]
    assert {mode: [(r["api"], r["tracer"]) for r in found] for mode, found in runs.items()} == {
        "off": [(False, "NoneType")], "api": [(True, "NoneType")], "sdk": [(True, "Tracer")],
    }  # fmt: skip
    for found in runs.values():
        assert found[0]["process_batch"]["rate"] > 0 and found[0]["end_to_end"]["rate"] > 0
