"""``redisaq monitor ...`` through real subprocesses, in both formats, against a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from redisaq_core import ServiceRegistry
from redisaq_core.embedded import free_port
from redisaq_core.keys import TopicKeys, job_id
from redisaq_core.metrics import COUNTERS, MetricsRecorder
from redisaq_core.registry import consumer_service_info
from tests import job_records as jr
from tests.helpers import Running, eventually


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "REDISAQ_")) and k != "LOG_LEVEL"}  # fmt: skip
    return env


def _argv(url: str, prefix: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "redisaq_core.cli.main", "--redis-url", url,
            "--key-prefix", prefix, "monitor", *args]  # fmt: skip


async def _run(url: str, prefix: str, *args: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *_argv(url, prefix, args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class Scene:
    url: str
    prefix: str
    topic: str
    c1: str
    c2: str
    c9: str
    done: str
    dead: str
    queued: list[str]

    async def run(self, *args: str) -> Result:
        return await _run(self.url, self.prefix, *args)

    async def both(self, *args: str) -> tuple[Result, Result]:
        table, data = await asyncio.gather(self.run(*args), self.run(*args, "--format", "json"))
        assert table.rc == 0 and data.rc == 0, (args, table.err, data.err)
        assert table.err == "" and data.err == ""
        return table, data


@pytest.fixture
async def scene(redis_url: str, redis: Redis, topic: str) -> Any:
    """A topic with 3 partitions, a group of two members, jobs, metrics and registry entries."""
    tag = uuid.uuid4().hex[:6]
    c1, c2, c9 = f"c1-{tag}", f"c2-{tag}", f"c9-{tag}"
    prefix = f"mon-{tag}:"
    keys = TopicKeys(topic)
    await jr.make_topic(redis, topic, 3)
    await jr.create_group(redis, topic, "billing", 3)
    done = await jr.submit(redis, topic, 0, payload={"n": 0})
    dead = await jr.submit(redis, topic, 1, payload={"n": 1})
    queued = [await jr.submit(redis, topic, p, payload={"n": p}) for p in (0, 2)]
    for _ in range(3):
        await redis.xadd(keys.stream(2), {"p": b"1"})
    await jr.add_member(redis, topic, "billing", c1, [0, 1])
    await jr.add_member(redis, topic, "billing", c2, [2])
    await jr.add_member(redis, topic, "billing", f"c3-{tag}", [], age_ms=60_000)
    assert await jr.read(redis, topic, "billing", c1, 0, 1) == 1
    assert await jr.read(redis, topic, "billing", c2, 2, 2) == 2
    await jr.next_ms(redis)  # distinct index scores: the listing order is known
    await jr.activate(redis, done, c1)
    await jr.complete(redis, done, {"answer": 42}, worker=c1)
    await jr.next_ms(redis)
    await jr.activate(redis, dead, c1)
    await jr.kill(redis, dead, "no such user", "LookupError")  # and its dead letter
    rec = MetricsRecorder(redis, topic, "billing", consumer=c1)
    rec.handled(0, 0.01, 0.05)
    rec.failed(1)
    rec.dead_lettered(1)
    await rec.stop()
    async with ServiceRegistry(redis=redis, key_prefix=prefix) as registry:
        for name in (c1, c9):
            info = consumer_service_info(topic=topic, group="billing", consumer_name=name,
                                         partitions=[0, 1] if name == c1 else [],
                                         host="10.1.2.3")  # fmt: skip
            await registry.register_service(info)
        yield Scene(redis_url, prefix, topic, c1, c2, c9, done, dead, queued)
        await registry.clear_all()


async def test_summary(scene: Scene) -> None:
    table, data = await scene.both("summary")
    s = data.json()
    assert set(s) == {"time", "topics", "partitions", "groups", "workers", "messages", "jobs"}
    assert s["topics"] >= 1 and s["partitions"] >= 3 and s["groups"] >= 1
    assert s["workers"]["alive"] >= 3  # two members and a registered consumer
    assert s["workers"]["stale"] >= 1
    m = s["messages"]
    assert set(m) == {"produced", "length", "dead_letters", "scheduled", "pending", "lag",
                      "in_flight", *COUNTERS}  # fmt: skip
    assert m["length"] >= 7 and m["dead_letters"] >= 1 and m["pending"] >= 3
    assert m["handled"] >= 1 and m["failed"] >= 1 and s["jobs"]["tracked"] >= 4
    lines = table.out.splitlines()
    assert lines[0].split() == ["FIELD", "VALUE"]
    assert any(line.startswith("workers") and "alive" in line for line in lines)
    assert any(line.startswith("jobs tracked") for line in lines)


async def test_topics_and_topic(scene: Scene) -> None:
    (table, data), (one_table, one_data) = await asyncio.gather(
        scene.both("topics"), scene.both("topic", scene.topic)
    )
    ours = [t for t in data.json() if t["topic"] == scene.topic]
    assert len(ours) == 1
    t = ours[0]
    assert (t["partitions"], t["groups"], t["members"]) == (3, ["billing"], 3)
    assert (t["length"], t["dead_letters"], t["pending"], t["lag"]) == (7, 1, 3, 4)
    assert (t["handled"], t["failed"], t["dead_lettered"]) == (1, 1, 1)
    assert table.out.splitlines()[0].split()[:4] == ["TOPIC", "PARTITIONS", "GROUPS", "MEMBERS"]
    row = next(line.split() for line in table.out.splitlines() if line.startswith(scene.topic))
    assert row[:5] == [scene.topic, "3", "billing", "3", "7"]

    view = one_data.json()
    assert (view["topic"], view["exists"], view["partitions"]) == (scene.topic, True, 3)
    assert [s["dead_letters"] for s in view["partition_stats"]] == [0, 1, 0]
    (group,) = view["groups"]
    rows = {r["partition"]: r for r in group["partitions"]}
    assert [rows[p]["owner"] for p in range(3)] == [scene.c1, scene.c1, scene.c2]
    assert [rows[p]["pending"] for p in range(3)] == [1, 0, 2]
    assert [rows[p]["lag"] for p in range(3)] == [1, 1, 2]
    assert rows[0]["handler_seconds"]["count"] == 1
    assert {m["name"] for m in group["members"]} >= {scene.c1, scene.c2}
    text = one_table.out
    assert f"topic {scene.topic}: 3 partition(s)" in text and "group billing" in text
    header = next(line for line in text.splitlines() if line.startswith("PARTITION"))
    assert header.split()[:5] == ["PARTITION", "OWNER", "LAG", "PENDING", "IN_FLIGHT"]
    line = next(x for x in text.splitlines() if x.split()[:2] == ["2", scene.c2])
    assert line.split()[2:4] == ["2", "2"]


async def test_workers_and_worker(scene: Scene) -> None:
    (table, data), (_, everyone) = await asyncio.gather(
        scene.both("workers"), scene.both("workers", "--all")
    )
    ours = {w["id"]: w for w in data.json() if w["topic"] == scene.topic}
    assert len(ours) == 3  # the stale member is left out...
    stale = [w for w in everyone.json() if w["topic"] == scene.topic and not w["alive"]]
    assert [w["name"] for w in stale] == [f"c3-{scene.c1[3:]}"]  # ...unless --all
    assert stale[0]["age"] >= 60
    w1, w2, w9 = (ours[f"{scene.topic}/billing/{n}"] for n in (scene.c1, scene.c2, scene.c9))
    assert (w1["member"], w1["alive"], w1["partitions"], w1["pending"]) == (True, True, [0, 1], 1)
    assert w1["service"]["host"] == "10.1.2.3"
    assert (w2["partitions"], w2["pending"], w2["service"]) == ([2], 2, None)
    assert (w9["member"], w9["alive"], w9["service"]["status"]) == (False, True, "healthy")
    assert table.out.splitlines()[0].split()[:3] == ["ID", "ALIVE", "AGE"]
    line = next(x for x in table.out.splitlines() if x.startswith(w1["id"]))
    assert line.split()[1] == "yes" and "10.1.2.3" in line and line.split()[-1] == "member"

    (by_id_table, by_id), (_, by_name) = await asyncio.gather(
        scene.both("worker", w1["id"]), scene.both("worker", scene.c2)
    )
    detail = by_id.json()
    assert detail["id"] == w1["id"] and detail["partitions"] == [0, 1]
    assert [o["partition"] for o in detail["owned"]] == [0, 1]
    assert detail["owned"][0]["pending"] == 1
    assert by_name.json()["id"] == w2["id"]
    assert "last_heartbeat" in by_id_table.out and "PARTITION  PENDING" in by_id_table.out


async def test_jobs_and_job(scene: Scene) -> None:
    (table, data), (_, dead), (_, limited) = await asyncio.gather(
        scene.both("jobs", "--topic", scene.topic),
        scene.both("jobs", "--topic", scene.topic, "--status", "dead"),
        scene.both("jobs", "--topic", scene.topic, "--limit", "2"),
    )
    records = data.json()
    ids = [r["id"] for r in records]
    assert ids[:2] == [scene.dead, scene.done] and set(ids[2:]) == set(scene.queued)
    assert [r["id"] for r in dead.json()] == [scene.dead]
    assert dead.json()[0]["error"] == "no such user"
    assert [r["id"] for r in limited.json()] == [scene.dead, scene.done]
    assert table.out.splitlines()[0].split()[:2] == ["ID", "STATUS"]
    assert len(table.out.splitlines()) == 5
    assert "LookupError: no such user" in table.out

    one_table, one = await scene.both("job", scene.done)
    record = one.json()
    assert (record["status"], record["result"], record["worker"]) == ("completed", {"answer": 42},
                                                                       scene.c1)  # fmt: skip
    assert record["attempts"] == 1 and record["completed_at"] >= record["queued_at"]
    fields = dict(line.split(None, 1) for line in one_table.out.splitlines() if " " in line)
    assert fields["status"].strip() == "completed"
    assert fields["result"].strip() == '{"answer":42}'


async def test_not_found_and_bad_usage(scene: Scene) -> None:
    missing = job_id(scene.topic, 0, "nope")
    cases = [
        (("job", missing), 1, "has no record"),
        (("worker", f"nobody-{uuid.uuid4().hex[:6]}"), 1, "no worker"),
        (("topic", f"none-{uuid.uuid4().hex[:6]}"), 1, "no topic"),
        (("job", "not-a-job-id"), 2, "not a job id"),
        (("jobs", "--status", "weird"), 2, "status must be one of"),
        (("jobs", "--limit", "0"), 2, "--limit"),
        (("summary", "--watch", "-1"), 2, "--watch"),
        (("nonsense",), 2, "invalid choice"),
    ]
    runs = [scene.run(*args, *fmt) for args, _, _ in cases for fmt in ((), ("--format", "json"))]
    results = await asyncio.gather(*runs)
    for i, result in enumerate(results):
        args, rc, message = cases[i // 2]
        assert result.rc == rc, (args, result)
        assert message in result.err, (args, result.err)
        assert result.out == "", (args, result.out)
        if args != ("nonsense",):  # the rest: one line, no usage text
            assert len(result.err.strip().splitlines()) == 1, result.err


async def _watch(
    scene: Scene, fmt: str, count: int, url: str | None = None
) -> tuple[int, list[str]]:
    args = ["topic", scene.topic, "--watch", "0.1", "--format", fmt]
    argv = _argv(url or scene.url, scene.prefix, args)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    assert proc.stdout is not None
    chunks: list[str] = []
    try:
        while True:
            text = "".join(chunks)
            seen = text.count("\x1b[H\x1b[2J") if fmt == "table" else text.count("\n")
            if seen >= count:
                break
            data = await asyncio.wait_for(proc.stdout.read(4096), 30)
            assert data, "the watch ended by itself"
            chunks.append(data.decode())
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, ["".join(chunks) + rest.decode()]


async def test_watch_redraws_until_interrupted(scene: Scene) -> None:
    (rc_table, (table,)), (rc_json, (lines,)) = await asyncio.gather(
        _watch(scene, "table", 3), _watch(scene, "json", 3)
    )
    assert rc_table == 0 and rc_json == 0
    frames = table.split("\x1b[H\x1b[2J")[1:]
    assert len(frames) >= 3
    assert all(f"topic {scene.topic}: 3 partition(s)" in frame for frame in frames)
    assert frames[0].startswith("Every 0.1s: redisaq")
    docs = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert len(docs) >= 3 and all(d["topic"] == scene.topic for d in docs)


@pytest.mark.single_node
async def test_a_watch_shows_no_password_of_its_command_line(scene: Scene, redis: Redis) -> None:
    # The header of each redraw echoed the whole command line, --redis-url and its password.
    user, password = f"mon-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.execute_command("ACL", "SETUSER", user, "on", ">" + password, "~*", "&*", "+@all")
    try:
        url = scene.url.replace("redis://", f"redis://{user}:{password}@", 1)
        rc, (table,) = await _watch(scene, "table", 2, url=url)
    finally:
        await redis.execute_command("ACL", "DELUSER", user)
    assert rc == 0
    assert "Every 0.1s: redisaq monitor topic" in table
    assert password not in table


class _Frames:
    """The frames a ``--watch`` subprocess has drawn so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.text = ""

    @property
    def frames(self) -> list[str]:
        return self.text.split("\x1b[H\x1b[2J")[1:-1]  # the last may be half written

    async def until(self, found: Any, timeout: float = 30) -> Any:
        """Read until ``found(frames)`` returns something truthy; return it."""
        assert self.proc.stdout is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while not (value := found(self.frames)):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"not drawn within {timeout}s; last frames: {self.frames[-2:]}"
            data = await asyncio.wait_for(self.proc.stdout.read(4096), left)
            assert data, "the watch ended by itself"
            self.text += data.decode("utf-8")
        return value


def _spark(frame: str, label: str) -> str | None:
    line = next((ln for ln in frame.splitlines() if ln.startswith(f"  {label} ")), None)
    return None if line is None else line.split(" now ")[0]


async def test_watch_draws_the_topic_throughput_as_sparklines(
    redis_url: str, redis: Redis, topic: str
) -> None:
    from redisaq_core import Consumer, Message, Producer
    from redisaq_core.metrics._series import SLOTS, STEP

    # records another client wrote, not of the series' shape: skipped, the loop goes on
    now, _ = await redis.time()
    old = [str((int(now) // STEP - k) % SLOTS) for k in (20, 21, 22)]
    await redis.hset(
        TopicKeys(topic).series,
        mapping={old[0]: "not json", old[1]: '{"t": []}', old[2]: '{"t": 5, "g": 1}', "x": "1"},
    )
    stop = asyncio.Event()

    async def handle(m: Message) -> None:
        pass

    async def produce(producer: Producer) -> None:
        n = 0
        while not stop.is_set():
            await producer.batch_enqueue([{"n": n + i} for i in range(5)])
            n += 5
            await asyncio.sleep(0.05)

    argv = _argv(redis_url, "cli-spark:", ["topic", topic, "--watch", "0.3"])
    async with Producer(topic, redis_url=redis_url, init_partitions=2) as producer:
        consumer = Consumer(topic, redis_url=redis_url, heartbeat_interval=0.2, poll_interval=0.1)
        feeding = asyncio.create_task(produce(producer))
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
        )
        try:
            watch = _Frames(proc)
            async with Running(consumer, handle):
                first = await watch.until(
                    lambda frames: next(
                        (s for f in frames if (s := _spark(f, "produced/s")) and s[-1] != s[0]),
                        None,
                    )
                )
                # the line changes while the producer runs
                await watch.until(lambda frames: _spark(frames[-1], "produced/s") != first)
                await watch.until(lambda frames: " now 0.0" not in frames[-1].split("handled/s")[1])
            stop.set()
            await feeding
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            stop.set()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    frame = watch.frames[-1]
    assert f"topic {topic}: 2 partition(s)" in frame
    assert "throughput, last 5 min (5 s buckets):" in frame
    line = _spark(frame, "produced/s")
    assert line is not None and len(line.split(" ", 3)[-1]) == 60


def test_sparkline_scales_to_the_largest_value() -> None:
    from redisaq_core.cli.monitor import sparkline

    assert sparkline([0, 1, 2, 4, 8]) == "\u2581\u2582\u2583\u2585\u2588"
    assert sparkline([0.0, 0.0]) == "\u2581\u2581"
    assert sparkline([0.01, 100.0], "_.-:=+*#") == ".#"
    assert sparkline([]) == ""


async def _get(port: int, path: str) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return status, headers, body


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_serve_metrics(scene: Scene) -> None:
    port = free_port()
    argv = _argv(scene.url, scene.prefix, ["serve-metrics", "--port", str(port),
                                           "--topic", scene.topic])  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    try:
        await eventually(lambda: _listening(port), timeout=20, message="metrics port")
        status, headers, body = await _get(port, "/metrics")
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert int(headers["Content-Length"]) == len(body.encode())
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }
        labels = (("group", "billing"), ("partition", "1"), ("topic", scene.topic))
        assert samples[("redisaq_messages_failed_total", labels)] == 1
        assert samples[("redisaq_messages_dead_lettered_total", labels)] == 1
        assert samples[("redisaq_messages_lag", labels)] == 1
        p2 = (("group", "billing"), ("partition", "2"), ("topic", scene.topic))
        assert samples[("redisaq_messages_pending", p2)] == 2
        owner = (("group", "billing"), ("owner", scene.c2), ("partition", "2"),
                 ("topic", scene.topic))  # fmt: skip
        assert samples[("redisaq_partition_owner_info", owner)] == 1
        assert samples[("redisaq_dead_letters", (("partition", "1"), ("topic", scene.topic)))] == 1
        assert {labels_[2][1] for (_, labels_) in samples if len(labels_) == 3} == {scene.topic}
        status, _, _ = await _get(port, "/elsewhere")
        assert status == "HTTP/1.1 404 Not Found"
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0
        assert f"serving metrics on http://127.0.0.1:{port}/metrics" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_metrics_bad_port(scene: Scene) -> None:
    result = await scene.run("serve-metrics", "--port", "70000")
    assert result.rc == 2 and "--port" in result.err


async def test_a_series_record_nested_too_deep_ends_no_watch(
    redis: Redis, redis_url: str, topic: str
) -> None:
    # Another client's series record, past the JSON decoder's depth. Before, the watch ended
    # with a traceback at its first frame.
    await jr.make_topic(redis, topic, 1)
    await redis.hset(TopicKeys(topic).series, "7", "[" * 5000)
    argv = _argv(redis_url, "cli-deep:", ["topic", topic, "--watch", "0.1"])
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    try:
        frames = await _Frames(proc).until(lambda frames: len(frames) >= 2 and frames)
        assert all("throughput, last" in frame for frame in frames)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0 and b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
