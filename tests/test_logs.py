"""JSON log lines: one object per line, the message's fields as fields, never a password."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from redis import Redis as SyncRedis

from redisaq_core import EmbeddedRedis, JsonFormatter, Producer
from redisaq_core.cli.main import build_parser, main
from redisaq_core.cli.worker import child_command
from redisaq_core.logs import log_context, log_format, reset_log_context
from tests.helpers import eventually
from tests.tracing_support import read_spans, sdk_in_this_process

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def protected() -> Iterator[EmbeddedRedis]:
    """A redis-server that needs PASSWORD."""
    with EmbeddedRedis() as server:
        admin = SyncRedis.from_url(server.url)
        admin.config_set("requirepass", PASSWORD)  # after start: its readiness check is a PING
        admin.close()
        yield server


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_a_worker_writes_json_lines_with_the_messages_fields(
    protected: EmbeddedRedis, tmp_path: Path
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{protected.port}/0"
    topic = f"t-{uuid.uuid4().hex[:12]}"
    spans, err = tmp_path / "spans.jsonl", tmp_path / "stderr.log"
    async with Producer(topic, redis_url=url) as producer:
        job = await producer.submit({"n": 1})
    args = [sys.executable, "-m", "tests.tracing_support", str(spans), "--log-format", "json",
            "-vv", "--redis-url", url, "worker", "tests.tracing_support:flaky", "--topic", topic,
            "--name", "w-json", "--heartbeat-interval", "0.3", "--poll-interval", "0.2",
            "--retry-backoff", "0.05"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with err.open("wb") as stderr:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        await eventually(
            lambda: len([s for s in read_spans(spans) if s["name"] == f"process {topic}"]) == 2,
            timeout=20, message="two handler runs",
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    text = err.read_text()
    assert PASSWORD not in text
    lines = lines_of(text)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    (failed,) = [line for line in lines if "failed (delivery 1)" in line["message"]]
    assert failed["level"] == "INFO" and failed["logger"] == "redisaq_core._settlement"
    assert {k: failed[k] for k in ("topic", "partition", "group", "consumer", "job_id")} == {
        "topic": topic, "partition": 0, "group": "default", "consumer": "w-json",
        "job_id": job.id,
    }  # fmt: skip
    runs = [s for s in read_spans(spans) if s["name"] == f"process {topic}"]
    handled = [line for line in lines if line["logger"] == "tests.handler"]
    assert len(handled) == 2
    for line, span in zip(handled, runs, strict=True):
        assert (line["trace_id"], line["span_id"]) == (span["trace_id"], span["span_id"])
        assert (line["topic"], line["group"], line["consumer"]) == (topic, "default", "w-json")
    assert failed["msg_id"] == runs[0]["attributes"]["messaging.message.id"]
    assert any(line["message"].startswith("consumer w-json: assigned partitions") for line in lines)


def test_log_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert log_format() == "json"
    assert log_format("text") == "text"
    monkeypatch.delenv("LOG_FORMAT")
    assert log_format() == "text"


def test_an_unknown_log_format_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "registry", "count"]) == 2
    err = capsys.readouterr().err
    assert "LOG_FORMAT='yaml' is not a log format: use one of text, json" in err
    monkeypatch.delenv("LOG_FORMAT")
    with pytest.raises(SystemExit) as exit_:
        main(["--log-format", "yaml", "registry", "count"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --log-format: invalid choice: 'yaml'" in err and "json" in err


def test_a_commands_error_is_a_json_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    assert main(["--log-format", "json", "--redis-url", url, "registry", "count"]) == 1
    (line,) = lines_of(capsys.readouterr().err)
    assert line["level"] == "ERROR" and line["logger"] == "redisaq"
    assert "cannot connect to Redis at redis://:***@127.0.0.1:1/0" in line["message"]
    assert PASSWORD not in json.dumps(line)


def test_an_unknown_log_format_stops_a_real_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "redisaq_core.cli.main", "worker", "m:f", "--topic", "t"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, LOG_FORMAT="logfmt", PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert out.returncode == 2
    assert "LOG_FORMAT='logfmt' is not a log format: use one of text, json" in out.stderr


def test_the_formatter_writes_fields_context_trace_and_exception() -> None:
    exporter, switch = sdk_in_this_process()
    record = logging.LogRecord("redisaq_core.x", logging.ERROR, __file__, 1, "bad %s", ("it",),
                               None)  # fmt: skip
    record.partition, record.msg_id, record.job_id = 3, "1-0", None
    token = log_context(topic="orders", group="g", consumer="c1")
    switch.on = True
    try:
        with trace.get_tracer("tests").start_as_current_span("handler") as span:
            try:
                raise ValueError("boom")
            except ValueError:
                record.exc_info = sys.exc_info()
            line = JsonFormatter().format(record)
    finally:
        switch.on = False
        exporter.clear()
        reset_log_context(token)
    out = json.loads(line)
    assert "\n" not in line
    ctx = span.get_span_context()
    assert {k: v for k, v in out.items() if k not in ("time", "exception")} == {
        "level": "ERROR", "logger": "redisaq_core.x", "message": "bad it", "topic": "orders",
        "group": "g", "consumer": "c1", "partition": 3, "msg_id": "1-0",
        "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
    }  # fmt: skip
    assert out["time"].endswith("Z") and "ValueError: boom" in out["exception"]
    plain = json.loads(JsonFormatter().format(logging.LogRecord("x", 20, "", 1, "m", (), None)))
    assert set(plain) == {"time", "level", "logger", "message"}


def test_a_supervisors_children_log_in_its_format() -> None:
    args = build_parser().parse_args(
        ["--log-format", "json", "-v", "worker", "m:f", "--topic", "t", "--processes", "2"]
    )
    command = child_command(args, 1)
    assert command[3:6] == ["-v", "--log-format", "json"]
