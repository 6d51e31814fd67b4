"""``python -m benchmarks.scale`` runs end to end on tiny sizes and reports every figure.

No timing assertions beyond what the protocol guarantees: the group settles,
every partition is read again after a join and after a kill, the idle window
saw heartbeats, and the plot is written. The pure helpers are checked on
their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale import spread
from benchmarks.scale_probe import Ownership

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.alone  # a benchmark takes every core
@pytest.mark.timeout(120)
def test_the_scale_benchmark_runs_a_tiny_matrix_and_writes_its_plot(tmp_path: Path) -> None:
    plot, saved, replot = tmp_path / "scale.png", tmp_path / "run.json", tmp_path / "again.png"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--partitions", "4", "--members", "2",
         "--heartbeat-interval", "0.3", "--idle-seconds", "0.5", "--slowlog-seconds", "0.5",
         "--rebalances", "1", "--json", "--plot", str(plot), "--save", str(saved)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    [cell] = report["results"]
    assert (cell["partitions"], cell["members"], cell["processes"]) == (4, 2, 2)
    for key in ("start_s", "join_owned_s", "join_read_s", "kill_owned_s", "kill_read_s"):
        assert cell[key] is not None and cell[key] > 0, key
    assert cell["join_read_s"] >= cell["join_owned_s"]
    assert cell["kill_read_s"] >= cell["kill_owned_s"]
    # A third member takes one of the 4 partitions, and gives it back when it is killed.
    assert [r["moved"] for r in cell["joins"] + cell["kills"]] == [1, 1]
    assert cell["server_commands_per_s"] > cell["requests_per_s"] > 0
    assert cell["requests"]["EVALSHA"] > 0
    assert cell["heartbeat_calls"] > 0 and cell["heartbeat_usec_mean"] > 0
    assert cell["heartbeat_warm_calls"] > 0 and cell["heartbeat_warm_usec_p50"] > 0
    assert cell["rss_mib_per_member"] > 0
    assert cell["handler_failures"] == 0
    assert report["environment"]["redis_server"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert json.loads(saved.read_text()) == report

    # A saved run is printed and plotted again without measuring anything.
    again = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--from-json", str(saved),
         "--plot", str(replot)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[4].split()[:2] == ["4", "2"]
    assert replot.read_bytes().startswith(b"\x89PNG")


def test_members_are_spread_over_at_most_the_processes_given() -> None:
    assert spread(1, 4) == [1]
    assert spread(2, 4) == [1, 1]
    assert spread(8, 4) == [2, 2, 2, 2]
    assert spread(10, 4) == [3, 3, 2, 2]
    assert spread(64, 4) == [16] * 4


def test_ownership_is_complete_only_when_assigned_balanced_and_leased_by_the_owner() -> None:
    tokens = {"a": "ta", "b": "tb"}
    settled = Ownership(
        partitions=3,
        members={"a", "b"},
        tokens=tokens,
        assignment={0: "a", 1: "a", 2: "b"},
        leases=["ta", "ta", "tb"],
    )
    assert settled.complete({"a", "b"})
    assert not settled.complete({"a", "b", "c"})  # a member not seen yet
    stale_lease = Ownership(3, {"a", "b"}, tokens, {0: "a", 1: "a", 2: "b"}, 0, ["ta", "tb", "tb"])
    assert not stale_lease.complete({"a", "b"})
    unbalanced = Ownership(3, {"a", "b"}, tokens, {0: "a", 1: "a", 2: "a"}, 0, ["ta"] * 3)
    assert not unbalanced.complete({"a", "b"})
    unassigned = Ownership(3, {"a", "b"}, tokens, {0: "a", 1: "b"}, 0, ["ta", "tb", None])
    assert not unassigned.complete({"a", "b"})
    moved = Ownership(3, {"a", "b"}, tokens, {0: "b", 1: "a", 2: "b"}, 0, ["tb", "ta", "tb"])
    assert moved.moved_from(settled) == 1
