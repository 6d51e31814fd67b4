"""``python -m benchmarks.fanout`` runs end to end with a tiny N and reports each target count."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fanout_support import ROOT

pytestmark = pytest.mark.alone  # a benchmark takes every core


@pytest.mark.timeout(90)
def test_the_fanout_benchmark_runs_and_reports_every_target_count() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.fanout", "--n", "300", "--repeat", "1", "--json",
         "--targets", "1,3"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert [r["targets"] for r in report["results"]] == [1, 3]
    for result in report["results"]:
        assert result["rate"] > 0 and result["raw_rate"] > 0 and result["ratio"] > 0
    assert report["environment"]["redis_server"]
