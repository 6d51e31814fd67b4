"""Passwords never printed: URLs redacted in every form, and the CLI's ways to give a password."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from redis import Redis as SyncRedis

from redisaq_core import EmbeddedRedis, Producer
from redisaq_core.cli import common
from redisaq_core.cli.main import main
from redisaq_core.connection import (
    check_url,
    create_client,
    redact_text,
    redact_url,
    url_secrets,
)
from redisaq_core.embedded import free_port
from redisaq_core.errors import ConfigurationError, ConnectionFailedError
from redisaq_core.web.gateway import Gateway
from tests.helpers import redisaq

PASSWORD = "pw-" + uuid.uuid4().hex[:10]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://app:s3cret@h:6379/0", "redis://app:***@h:6379/0"),  # an ACL user
        ("rediss://app:s%40cret@h/0", "rediss://app:***@h/0"),
        ("redis://s3cret@h:6379", "redis://***@h:6379"),  # a lone userinfo may be a password
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://:s3cret@/run/redis.sock", "unix://:***@/run/redis.sock"),
        ("rediss://h:6380/0?ssl_password=s3cret&ssl_ca_certs=/ca.pem",
         "rediss://h:6380/0?ssl_password=***&ssl_ca_certs=/ca.pem"),
        ("redis://:s3cret@h:99999/0", "redis://:***@h:99999/0"),  # a port out of range
        ("redis://app:s3cret@h:notaport/0", "redis://app:***@h:notaport/0"),
        ("redis+cluster://app:s3cret@h:7000", "redis+cluster://app:***@h:7000"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://[::1:6379", "<unparseable URL>"),
    ],
)  # fmt: skip
def test_redact_url_hides_every_form_of_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url) and "s%40cret" not in redact_url(url)


def test_secrets_of_a_url_are_scrubbed_from_any_text() -> None:
    url = "redis://app:p%40ss@h:1/0?password=other"
    assert set(url_secrets(url)) >= {"p%40ss", "p@ss", "other"}
    assert redact_text("AUTH p@ss failed; other", url) == "AUTH *** failed; ***"


async def test_a_component_never_shows_a_query_password() -> None:
    port = free_port()
    producer = Producer("t", redis_url=f"redis://127.0.0.1:{port}/0?password={PASSWORD}")
    assert PASSWORD not in producer.url
    with pytest.raises(ConnectionFailedError) as info:
        await producer.connect()
    assert PASSWORD not in str(info.value) and "password=***" in str(info.value)
    odd = Producer("t", redis_url=f"redis://:{PASSWORD}@127.0.0.1:99999/0")
    assert odd.url == "redis://:***@127.0.0.1:99999/0"


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A redis-server that needs PASSWORD, listening on TCP and on a unix socket too."""
    sock = str(tmp_path_factory.mktemp("sock") / "redis.sock")
    with EmbeddedRedis(extra_args=["--unixsocket", sock, "--unixsocketperm", "700"]) as server:
        admin = SyncRedis.from_url(server.url)
        admin.config_set("requirepass", PASSWORD)  # after start: its readiness check is a PING
        admin.close()
        yield server, sock


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "REDIS_PASSWORD", "REDIS_PASSWORD_FILE", "REDIS_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    common._warned.clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``redisaq`` in this process; its exit code and everything it printed."""
    code = main(list(argv))
    out = capsys.readouterr()
    text = out.out + out.err
    assert PASSWORD not in text
    return code, text


def test_password_from_the_environment_a_file_or_the_command_line(
    protected: tuple[EmbeddedRedis, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, _ = protected
    where = ["--redis-host", "127.0.0.1", "--redis-port", str(server.port)]
    code, text = run(capsys, *where, "registry", "count")
    assert code == 1 and "cannot connect" in text

    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    os.chmod(secret, 0o600)
    assert run(capsys, *where, "--redis-password-file", str(secret), "registry", "count")[0] == 0

    code, text = run(capsys, *where, "--redis-password", PASSWORD, "registry", "count")
    assert code == 0 and "visible to other users" in text

    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    code, text = run(capsys, *where, "registry", "count")
    assert code == 0 and "warning" not in text
    monkeypatch.setenv("REDIS_PASSWORD", "wrong-" + PASSWORD)
    code, text = run(capsys, *where, "registry", "count")
    assert code == 1 and "wrong-" not in text

    code, text = run(capsys, *where, "--redis-password-file", str(tmp_path / "none"), "registry",
                     "count")  # fmt: skip
    assert code == 2 and "cannot read the password file" in text


def test_a_unix_socket_with_its_password_in_the_query(
    protected: tuple[EmbeddedRedis, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, sock = protected
    url = f"unix://{sock}?db=0&password={PASSWORD}"
    assert run(capsys, "--redis-url", url, "registry", "count")[0] == 0
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)  # added to a URL that has none
    assert run(capsys, "--redis-url", f"unix://{sock}?db=0", "registry", "count")[0] == 0
    missing = f"unix://{sock}.missing?db=0&password={PASSWORD}"
    code, text = run(capsys, "--redis-url", missing, "-v", "registry", "count")
    assert code == 1 and "password=***" in text


# A password with a reserved character written unencoded: a URL parser ends the host part
# at the first "/", "?" or "#", so the password's pieces would read as host, port or path.
RESERVED = ["Xy7#Q9zz", "Xy7/Q9zz", "Xy7?Q9zz", "4821/Q9zz"]


def shown_pieces(text: str, password: str) -> list[str]:
    """The pieces of ``password`` (split at reserved characters) that ``text`` shows."""
    return [piece for piece in re.split(r"[#/?@]", password) if piece and piece in text]


def with_password(url: str, password: str) -> str:
    """``url`` (of the suite's server) with user ``alice`` and ``password`` written as is."""
    parts = urlsplit(url)
    return f"{parts.scheme}://alice:{password}@{parts.netloc}{parts.path}"


@pytest.mark.parametrize("password", [*RESERVED, "Xy7@Q9zz", "Xy7/Q9zz?w#v@u"])
def test_everything_up_to_the_last_at_sign_is_a_secret(password: str) -> None:
    url = f"redis://alice:{password}@h:6379/0?db=0"
    assert redact_url(url) == "redis://alice:***@h:6379/0?db=0"
    assert password in url_secrets(url)
    first = re.split(r"[#/?]", password)[0]  # what a parser takes for the port
    assert redact_text(f"connecting to alice:{first}.", url) == "connecting to alice:***."
    query = "unix:///run/redis.sock?password=s3@cret"  # an "@" in a query value: hidden whole
    assert "s3" not in redact_url(query) and "cret" not in redact_url(query)


@pytest.mark.parametrize("password", RESERVED)
async def test_a_component_refuses_a_url_its_password_would_be_misread_in(
    redis_url: str, password: str
) -> None:
    url = with_password(redis_url, password)
    with pytest.raises(ConfigurationError) as info:
        create_client(url)
    assert "bad redis_url" in str(info.value) and "%2F, %3F and %23" in str(info.value)
    assert not shown_pieces(str(info.value), password)
    producer = Producer("t", redis_url=url)
    assert not shown_pieces(producer.url, password)
    with pytest.raises(ConfigurationError) as info:
        await producer.connect()
    assert not shown_pieces(str(info.value), password)
    gateway = Gateway(redis_url=url, redis=None, key_prefix="", heartbeat_timeout=10)
    with pytest.raises(ConfigurationError) as info:
        await gateway.start()
    assert not shown_pieces(str(info.value), password)


def test_other_bad_urls_are_one_configuration_error() -> None:
    for url, reason in [
        ("redis://app:s3cret@h:notaport/0", "Port could not be cast"),
        ("redis://h:6379/0?no_such_option=1", "no_such_option"),
        ("redis+cluster://h:7000?no_such_option=1", "no_such_option"),
        ("redis://h:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("redis://[::1/0", "Invalid IPv6 URL"),
    ]:
        with pytest.raises(ConfigurationError, match=reason) as info:
            create_client(url)
        assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("options", ["max_connections=5", "timeout=1", "socket_timeout=2"])
def test_a_url_with_options_of_the_connection_pool_is_taken(options: str) -> None:
    # The check built a connection of every option: the pool's own were refused.
    check_url(f"redis://h:6379/0?{options}")


@pytest.mark.parametrize("password", RESERVED)
def test_the_cli_shows_one_line_and_no_piece_of_such_a_password(
    redis_url: str, password: str
) -> None:
    run = redisaq("--redis-url", with_password(redis_url, password), "dlq", "count", "t")
    assert not shown_pieces(run.stdout + run.stderr, password)
    assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1
    assert run.returncode == 2 and "bad redis_url 'redis" in run.stderr


def test_the_cli_hides_a_password_with_an_at_sign(redis_url: str) -> None:
    run = redisaq("--redis-url", with_password(redis_url, "Xy7@Q9zz"), "dlq", "count", "t")
    assert not shown_pieces(run.stdout + run.stderr, "Xy7@Q9zz")
    assert "Traceback" not in run.stderr and run.returncode == 1  # no such user: AUTH fails


async def test_passwords_with_reserved_characters_that_do_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EmbeddedRedis() as server:
        admin = SyncRedis.from_url(server.url)
        base = f"127.0.0.1:{server.port}/0"
        try:
            admin.config_set("requirepass", "Xy7/Q9#zz?w")
            encoded = f"redis://:{quote('Xy7/Q9#zz?w', safe='')}@{base}"
            async with Producer("t", redis_url=encoded) as producer:
                assert await producer.enqueue({"n": 1})
            admin = SyncRedis.from_url(encoded)
            admin.config_set("requirepass", "Xy7@Q9zz")  # an "@" needs no encoding
            caplog.set_level(logging.INFO, logger="redisaq_core.web.gateway")
            gateway = Gateway(
                redis_url=f"redis://:Xy7@Q9zz@{base}", redis=None, key_prefix="",
                heartbeat_timeout=10,
            )  # fmt: skip
            await gateway.start()
            await gateway.stop()
        finally:
            admin.close()
    assert f"gateway connected to redis://:***@{base}" in caplog.text
    assert not shown_pieces(caplog.text, "Xy7@Q9zz")
