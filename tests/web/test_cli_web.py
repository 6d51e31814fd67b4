"""``redisaq web``: a real process that prints its URL when ready and stops on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from redisaq_core.cli import web as web_cli
from redisaq_core.cli.main import build_parser, main
from redisaq_core.cli.web import RedactTokens


@contextmanager
def web_process(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    command = [sys.executable, "-m", "redisaq_core.cli.main", *args]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert lines, "redisaq web printed nothing"
    return lines[0].strip()


def test_help_lists_the_options() -> None:
    parser = build_parser()
    args = parser.parse_args(["web"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.token is None


def test_serves_until_sigterm_with_token_from_the_environment(
    web_redis_url: str, prefix: str
) -> None:
    env = {"REDISAQ_WEB_TOKEN": "env-token", "HEARTBEAT_TIMEOUT": "4"}
    with web_process(
        "--redis-url", web_redis_url, "--key-prefix", prefix, "web", "--port", "0", env=env
    ) as proc:
        url = first_line(proc)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert httpx.get(f"{url}health").status_code == 401
        r = httpx.get(f"{url}health", headers={"Authorization": "Bearer env-token"})
        assert r.json() == {"status": "ok", "redis": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_unreachable_redis_fails_without_showing_the_password() -> None:
    with web_process("--redis-url", "redis://:pa55word@127.0.0.1:1/0", "web", "--port", "0") as p:
        assert p.wait(30) == 1
        assert p.stderr is not None and p.stdout is not None
        err = p.stderr.read()
        assert "cannot connect to Redis" in err and "***" in err
        assert "pa55word" not in err + p.stdout.read()


def test_a_taken_port_fails(web_redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        with web_process("--redis-url", web_redis_url, "web", "--port", port) as p:
            assert p.wait(30) == 1
            assert p.stderr is not None
            assert "did not start" in p.stderr.read()


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["web", "--port", "70000"], {}),
        (["web"], {"HEARTBEAT_TIMEOUT": "soon"}),
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2


def test_tokens_are_hidden_in_log_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1,
        '%s - "WebSocket %s" [accepted]', ("127.0.0.1:5", "/ws/jobs?token=s3cret&x=1"), None,
    )  # fmt: skip
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "WebSocket /ws/jobs?token=***&x=1" [accepted]'


def test_a_non_loopback_address_needs_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDISAQ_WEB_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        assert main(["web", "--host", host, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert f"refusing to serve {host} without a token" in err and "--insecure-no-token" in err
    parser = build_parser()
    args = parser.parse_args(["web", "--host", "0.0.0.0", "--insecure-no-token"])
    assert web_cli._settings(args)[0] is None  # accepted: the operator said so
    args = parser.parse_args(["web", "--host", "192.0.2.10"])
    monkeypatch.setenv("REDISAQ_WEB_TOKEN", "t")
    assert web_cli._settings(args)[0] == "t"


def test_allowed_hosts_follow_the_bound_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDISAQ_WEB_ALLOWED_HOSTS", raising=False)
    parser = build_parser()

    def hosts(*argv: str) -> list[str]:
        return web_cli.allowed_hosts(parser.parse_args(["web", *argv]))

    assert hosts() == ["localhost", "127.0.0.1", "::1"]
    assert hosts("--host", "::1") == ["localhost", "127.0.0.1", "::1"]
    assert hosts("--host", "192.0.2.10") == ["192.0.2.10", "localhost", "127.0.0.1", "::1"]
    assert hosts("--host", "0.0.0.0") == ["*"]
    assert hosts("--allowed-host", "gw.example", "--allowed-host", ".corp") == [
        "gw.example", ".corp",
    ]  # fmt: skip
    monkeypatch.setenv("REDISAQ_WEB_ALLOWED_HOSTS", "a.example, b.example")
    assert hosts("--host", "0.0.0.0") == ["a.example", "b.example"]


def test_token_from_a_file_and_limits_from_options(
    web_redis_url: str, prefix: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    with web_process(
        "--redis-url", web_redis_url, "--key-prefix", prefix, "web", "--port", "0",
        "--token-file", str(token_file), "--max-sockets", "1", "--max-body-size", "4096",
        env={"REDISAQ_WEB_TOKEN": "ignored"},
    ) as proc:  # fmt: skip
        url = first_line(proc)
        auth = {"Authorization": "Bearer file-token"}
        assert httpx.get(f"{url}health", headers=auth).status_code == 200
        r = httpx.post(f"{url}jobs", headers=auth, json={"topic": "t", "payload": "x" * 5000})
        assert r.status_code == 413
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        assert "file-token" not in proc.stderr.read()


def test_a_token_on_the_command_line_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["web", "--token", "visible-token"])
    assert web_cli.gateway_token(args) == "visible-token"
    err = capsys.readouterr().err
    assert "visible to other users" in err and "visible-token" not in err
