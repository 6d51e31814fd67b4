"""Every HTTP route of the gateway, through httpx against the ASGI app (lifespan run)."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from redisaq_core import Consumer, EmbeddedRedis, Message, Producer, ResultStore, ServiceRegistry
from redisaq_core.keys import TopicKeys
from redisaq_core.web import create_app
from redisaq_core.web.gateway import job_dict
from tests.helpers import Running, eventually
from tests.web.conftest import consumer, echo


def _fields(response: httpx.Response) -> list[str]:
    """The field names a 422 answer names."""
    assert response.status_code == 422, response.text
    return [str(error["loc"][-1]) for error in response.json()["detail"]]


async def test_job_submitted_over_http_is_followed_to_its_result(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    r = await client.post(
        "/jobs",
        json={"topic": topic, "payload": {"n": 1}, "job_type": "echo", "client_id": "c1"},
    )
    assert r.status_code == 201, r.text
    accepted = r.json()
    assert accepted["status"] == "queued"
    assert accepted["job_type"] == "echo" and accepted["client_id"] == "c1"
    job_id = accepted["job_id"]
    assert job_id.startswith(f"{topic}/0/")

    r = await client.get(f"/jobs/{job_id}")
    assert r.status_code == 200
    assert r.json()["status"] == "queued" and r.json()["job_id"] == job_id

    async with Running(consumer(topic, web_redis_url), echo):

        async def completed() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
            return body if body["status"] == "completed" else None

        record = await eventually(completed, timeout=10)
    assert record["result"] == {"echo": {"n": 1}}
    assert record["attempts"] == 1 and record["worker"]
    assert record["queued_at"] <= record["active_at"] <= record["completed_at"]

    r = await client.get("/jobs", params={"topic": topic, "status": "completed", "limit": 5})
    assert [j["job_id"] for j in r.json()] == [job_id]
    r = await client.get("/jobs", params={"topic": topic, "status": "queued"})
    assert r.json() == []
    assert (await client.get("/jobs", params={"limit": 1})).status_code == 200


async def test_a_job_post_retried_with_its_idempotency_key_returns_the_first_job(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    body = {"topic": topic, "payload": {"n": 1}, "idempotency_key": "order-1"}
    first = await client.post("/jobs", json=body)
    again = await client.post("/jobs", json=body)  # as after a reply lost on its way
    assert first.status_code == again.status_code == 201, again.text
    assert first.json()["job_id"] == again.json()["job_id"]
    other = await client.post("/jobs", json={**body, "idempotency_key": "order-2"})
    assert other.json()["job_id"] != first.json()["job_id"]
    r = await client.get("/jobs", params={"topic": topic, "status": "queued"})
    assert len(r.json()) == 2
    long_key = {**body, "idempotency_key": "é" * 129}  # 258 bytes
    assert _fields(await client.post("/jobs", json=long_key)) == ["idempotency_key"]
    assert len((await client.get("/jobs", params={"topic": topic})).json()) == 2


@pytest.mark.parametrize("value", ["[" * 300 + "]" * 300, "[" * 252 + "]" * 252, str(2**70)])
async def test_a_result_or_progress_no_json_encoder_takes_leaves_the_job_readable(
    client: httpx.AsyncClient, web_redis_url: str, topic: str, value: str
) -> None:
    # Nested past the encoders' depth, or an integer past 64 bits (another client's, or a
    # handler's): the job is shown without it. Before, the first failed GET /jobs/{id} and
    # GET /jobs with 500, and both the dashboard's snapshot (encoded with orjson).
    r = await client.post("/jobs", json={"topic": topic, "payload": {"n": 1}})
    job_id = r.json()["job_id"]
    fields = {"status": "completed", "result": value, "result_kind": "s", "progress": value}
    async with Redis.from_url(web_redis_url) as redis:
        await redis.hset(TopicKeys(topic).job(0, job_id), mapping=fields)
        async with ResultStore(redis=redis) as store:
            record = await store.get(job_id)
    assert record is not None
    orjson.dumps({"type": "snapshot", "jobs": [job_dict(record)]})  # as the dashboard does
    r = await client.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["status"] == "completed" and shown["progress"] is None
    if value.startswith("["):  # as a result, a big integer reads as a float (and 252 levels
        # pass the HTTP encoder, not the snapshot's, three levels deeper)
        assert shown["result"] is None and "can't be shown as JSON" in shown["result_error"]
    listed = await client.get("/jobs", params={"topic": topic})
    assert listed.status_code == 200 and listed.json()[0]["job_id"] == job_id


async def test_unknown_and_malformed_job_ids(client: httpx.AsyncClient, topic: str) -> None:
    r = await client.get(f"/jobs/{topic}/0/{uuid.uuid4().hex}")
    assert r.status_code == 404 and "no record" in r.json()["detail"]
    assert _fields(await client.get("/jobs/not-a-job-id")) == ["job_id"]
    assert _fields(await client.get("/jobs", params={"status": "sleeping"})) == ["status"]
    assert _fields(await client.get("/jobs", params={"limit": 0})) == ["limit"]
    assert _fields(await client.get("/jobs", params={"topic": "a b"})) == ["topic"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": 1}, "topic"),
        ({"topic": "t"}, "payload"),
        ({"topic": "bad topic", "payload": 1}, "topic"),
        ({"topic": "{t}", "payload": 1}, "topic"),
        ({"topic": "t", "payload": 1, "priority": 16}, "priority"),
        ({"topic": "t", "payload": 1, "priority": -1}, "priority"),
        ({"topic": "t", "payload": 1, "priority": "1"}, "priority"),
        ({"topic": "t", "payload": 1, "priority": True}, "priority"),
        ({"topic": "t", "payload": 1, "timeout": 0}, "timeout"),
        ({"topic": "t", "payload": 1, "partition_key": ""}, "partition_key"),
        ({"topic": "t", "payload": 1, "idempotency_key": ""}, "idempotency_key"),
        ({"topic": "t", "payload": 1, "idempotency_key": "k" * 257}, "idempotency_key"),
    ],
)
async def test_invalid_job_requests_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    assert _fields(await client.post("/jobs", json=body)) == [field]


async def test_refusals_of_the_library_are_422_naming_the_field(
    client: httpx.AsyncClient, topic: str
) -> None:
    r = await client.post(
        "/jobs", json={"topic": topic, "payload": {"a": 1}, "partition_key": "user"}
    )
    assert _fields(r) == ["partition_key"]
    r = await client.post("/jobs", json={"topic": topic, "payload": 2**70})
    assert _fields(r) == ["payload"]


async def test_priorities_of_a_topic_with_levels(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    async with Producer(topic, redis_url=web_redis_url, priorities=3):
        pass
    r = await client.post("/jobs", json={"topic": topic, "payload": 1, "priority": 2})
    assert r.status_code == 201, r.text
    r = await client.get(f"/jobs/{r.json()['job_id']}")
    assert r.json()["priority"] == 2
    # Above the highest level: the highest.
    r = await client.post("/jobs", json={"topic": topic, "payload": 1, "priority": 9})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/jobs/{r.json()['job_id']}")).json()["priority"] == 2


async def test_a_priority_on_a_topic_nobody_set_up(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    """Seed 001's clients send ``"priority": 5`` to a topic the gateway creates (one level)."""
    r = await client.post("/jobs", json={"topic": topic, "payload": {"n": 1}, "priority": 5})
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    assert (await client.get(f"/jobs/{job_id}")).json()["priority"] == 0
    seen: list[Any] = []

    async def handle(message: Message) -> str:
        seen.append(message.payload)
        return "done"

    consumer = Consumer(topic, redis_url=web_redis_url, heartbeat_interval=0.2, poll_interval=0.05)
    async with Running(consumer, handle):
        await eventually(lambda: seen == [{"n": 1}], message="the job is handled")
    record = await eventually(
        lambda: _completed(client, job_id), message="the job's record says completed"
    )
    assert record["result"] == "done"


async def _completed(client: httpx.AsyncClient, job_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
    return record if record["status"] == "completed" else None


async def test_bad_json_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    json_type = {"content-type": "application/json"}
    r = await client.post("/jobs", content=b"{not json", headers=json_type)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    big = b'{"topic": "t", "payload": "' + b"x" * 1_100_000 + b'"}'
    r = await client.post("/jobs", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    async def chunks() -> Any:  # no Content-Length: counted as it arrives
        yield b'{"topic": "t", "payload": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    r = await client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_register_and_list_workers(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/register",
        json={"name": "Worker 1", "host": "127.0.0.1", "port": 8001, "metadata": {"gpu": "A100"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "registered"
    generated = r.json()["worker_id"]
    second = {"worker_id": "w-2", "name": "Worker 2", "host": "localhost", "port": 8002}
    r = await client.post("/register", json=second)
    assert r.status_code == 201 and r.json()["worker_id"] == "w-2"

    workers = (await client.get("/workers")).json()
    assert {w["worker_id"] for w in workers} == {generated, "w-2"}
    one = (await client.get(f"/workers/{generated}")).json()
    assert one["name"] == "Worker 1" and one["host"] == "127.0.0.1" and one["port"] == 8001
    assert one["status"] == "registered" and one["metadata"] == {"gpu": "A100"}
    assert one["service_type"] == "worker" and one["last_heartbeat"] > 0
    r = await client.get("/workers", params={"status": "registered", "service_type": "worker"})
    assert len(r.json()) == 2
    assert (await client.get("/workers", params={"status": "alive"})).json() == []
    assert (await client.get("/workers/nobody")).status_code == 404
    assert (await client.get("/workers/a b")).status_code == 404
    assert _fields(await client.get("/workers", params={"status": "asleep"})) == ["status"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"host": "h", "port": 1}, "name"),
        ({"name": "n", "port": 1}, "host"),
        ({"name": "n", "host": "h"}, "port"),
        ({"name": "n", "host": "h", "port": 70000}, "port"),
        ({"name": "n", "host": "h", "port": "80"}, "port"),
        ({"name": "n", "host": "a host", "port": 1}, "host"),
        ({"name": "n", "host": "h", "port": 1, "worker_id": "a/b"}, "worker_id"),
        ({"name": "n", "host": "h", "port": 1, "worker_id": "jobs"}, "worker_id"),
        ({"name": "n", "host": "h", "port": 1, "metadata": []}, "metadata"),
    ],
)
async def test_invalid_registrations_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    assert _fields(await client.post("/register", json=body)) == [field]


async def test_topics_dead_letters_replay_and_metrics(
    client: httpx.AsyncClient, web_redis_url: str, topic: str
) -> None:
    ok = (await client.post("/jobs", json={"topic": topic, "payload": {"n": 1}})).json()
    bad = (await client.post("/jobs", json={"topic": topic, "payload": {"fail": True}})).json()
    c = consumer(topic, web_redis_url)
    async with Running(c, echo):

        async def finished(job_id: str, status: str) -> bool:
            return bool((await client.get(f"/jobs/{job_id}")).json()["status"] == status)

        await eventually(lambda: finished(ok["job_id"], "completed"), timeout=10)
        await eventually(lambda: finished(bad["job_id"], "dead"), timeout=10)

        topics = (await client.get("/topics")).json()
        mine = next(t for t in topics if t["topic"] == topic)
        assert mine["partitions"] == 1 and mine["groups"] == ["web-tests"]
        assert mine["dead_letters"] == 1

        view = (await client.get(f"/topics/{topic}")).json()
        assert view["exists"] and view["partitions"] == 1
        row = view["groups"][0]["partitions"][0]
        assert row["owner"] == c.name and row["pending"] == 0 and row["lag"] == 0

        letters = (await client.get(f"/dlq/{topic}")).json()
        assert len(letters) == 1
        letter = letters[0]
        assert letter["error"] == "asked to fail" and letter["error_type"] == "RuntimeError"
        assert letter["partition"] == 0 and letter["payload"] == {"fail": True}
        assert letter["group"] == "web-tests" and letter["msg_id"]

        assert _fields(await client.post(f"/dlq/{topic}/replay", json={})) == ["ids"]
        assert _fields(await client.post(f"/dlq/{topic}/replay", json={"ids": ["zz"]})) == ["ids"]
        r = await client.post(f"/dlq/{topic}/replay", json={"ids": [letter["id"]]})
        assert r.status_code == 200 and r.json() == {"replayed": 1}
        assert (await client.get(f"/dlq/{topic}")).json() == []
        # replayed: handled again, fails again, dead again
        await eventually(lambda: _count(client, topic), timeout=10)
        r = await client.post(f"/dlq/{topic}/replay", json={"all": True})
        assert r.json() == {"replayed": 1}

    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert f'redisaq_topic_partitions{{topic="{topic}"}} 1' in r.text

    assert (await client.get("/topics/no-such-topic-x")).status_code == 404
    assert (await client.get("/dlq/no-such-topic-x")).status_code == 404
    r = await client.post("/dlq/no-such-topic-x/replay", json={"all": True})
    assert r.status_code == 404
    assert _fields(await client.get("/topics/a{b}")) == ["name"]
    assert _fields(await client.get("/dlq/a{b}")) == ["topic"]


async def _count(client: httpx.AsyncClient, topic: str) -> bool:
    return len((await client.get(f"/dlq/{topic}")).json()) == 1


async def test_health_page_and_schema(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok", "redis": True}
    r = await client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    page = r.text
    assert "<script src" not in page and '<link rel="stylesheet"' not in page
    # nothing from the internet (the vendored chart library names its home in a comment)
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", page)
    assert "uPlot" in page and "/*UPLOT*/" not in page
    assert 'id="submit-form"' in page and "/ws/dashboard" in page

    schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert "/workers/{worker_id}" in paths
    for path in ("/jobs", "/jobs/{job_id}", "/register", "/workers", "/workers/{worker_id}",
                 "/topics", "/topics/{name}", "/topics/{name}/series", "/dlq/{topic}",
                 "/dlq/{topic}/replay", "/metrics", "/health", "/"):  # fmt: skip
        assert path in paths, path
    ok = paths["/jobs"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/JobAccepted"}
    for name in ("JobModel", "WorkerModel", "TopicViewModel", "DeadLetterModel", "SubmitJob"):
        assert name in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 404


async def test_token_is_required_everywhere(web_redis_url: str, prefix: str) -> None:
    app = create_app(redis_url=web_redis_url, key_prefix=prefix, token="s3cret")
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            routes = [("GET", "/jobs"), ("GET", "/workers"), ("GET", "/topics"),
                      ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/dlq/t"),
                      ("POST", "/jobs"), ("POST", "/register"), ("GET", "/health")]  # fmt: skip
            for method, path in routes:
                r = await c.request(method, path)
                assert r.status_code == 401, (method, path)
                assert r.headers["www-authenticate"] == "Bearer"
            wrong = {"Authorization": "Bearer nope"}
            assert (await c.get("/health", headers=wrong)).status_code == 401
            assert (await c.get("/health", headers={"Authorization": "s3cret"})).status_code == 401
            good = {"Authorization": "Bearer s3cret"}
            assert (await c.get("/health", headers=good)).status_code == 200
            assert (await c.get("/health", headers={"authorization": "bearer s3cret"})).is_success
            # the dashboard page is a static document: it needs no token (its sockets do)
            assert (await c.get("/")).status_code == 200
            # a token in the URL is never taken: proxies and access logs keep URLs
            assert (await c.get("/health", params={"token": "s3cret"})).status_code == 401
            r = await c.post("/jobs", json={}, headers=good)
            assert r.status_code == 422


def test_create_app_checks_its_arguments() -> None:
    from redisaq_core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="heartbeat_timeout"):
        create_app(heartbeat_timeout=0)
    with pytest.raises(ConfigurationError, match="token"):
        create_app(token="")
    with pytest.raises(ConfigurationError, match="key_prefix"):
        create_app(key_prefix="{x}")
    with pytest.raises(ConfigurationError, match="either"):
        create_app(redis_url="redis://x", redis=object())
    with pytest.raises(ConfigurationError, match="max_body_size"):
        create_app(max_body_size=0)


async def test_redis_down_gives_503_and_no_password_anywhere(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    server = EmbeddedRedis()
    server.start()
    try:
        admin = Redis.from_url(server.url)
        await admin.config_set("requirepass", secret)
        await admin.aclose()
        url = server.url.replace("redis://", f"redis://:{secret}@")
        app = create_app(redis_url=url, key_prefix=prefix)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                assert (await c.get("/health")).status_code == 200
                server.stop()
                answers = [
                    await c.get("/health"),
                    await c.get("/workers"),
                    await c.get("/topics"),
                    await c.post("/jobs", json={"topic": "t", "payload": 1}),
                    await c.post("/register", json={"name": "n", "host": "h", "port": 1}),
                ]
                for r in answers:
                    assert r.status_code == 503, r.text
                    assert r.json() == {"detail": "Redis unavailable"}
                    assert secret not in r.text
    finally:
        server.stop()
    assert caplog.records
    for record in caplog.records:
        assert secret not in record.getMessage()


async def test_consumers_registered_in_the_registry_are_workers_too(
    client: httpx.AsyncClient, web_redis_url: str, prefix: str, topic: str
) -> None:
    async with Producer(topic, redis_url=web_redis_url):
        pass
    async with ServiceRegistry(redis_url=web_redis_url, key_prefix=prefix) as registry:
        c = consumer(topic, web_redis_url, registry=registry, consumer_name="c1")
        async with Running(c, echo):
            worker_id = f"{topic}/web-tests/c1"

            async def listed() -> dict[str, Any] | None:
                r = await client.get(f"/workers/{worker_id}")
                return r.json() if r.status_code == 200 else None

            worker = await eventually(listed, timeout=10)
            assert worker["service_type"] == "consumer" and worker["name"] == "c1"
            assert worker["metadata"]["topic"] == topic
            r = await client.get("/workers", params={"service_type": "consumer"})
            assert [w["worker_id"] for w in r.json()] == [worker_id]


async def test_cross_origin_requests_are_refused(web_redis_url: str, prefix: str) -> None:
    app = create_app(
        redis_url=web_redis_url, key_prefix=prefix, allowed_origins=["https://ops.example.com"]
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            body = {"name": "n", "host": "h", "port": 1}
            evil = {"Origin": "https://evil.example"}
            r = await c.post("/register", json=body, headers=evil)
            assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
            assert (await c.post("/jobs", json={}, headers={"Origin": "null"})).status_code == 403
            assert (await c.get("/workers", headers=evil)).status_code == 403  # reads too
            same = {"Origin": "http://localhost"}
            assert (await c.post("/register", json=body, headers=same)).status_code == 201
            ops = {"Origin": "https://ops.example.com/"}
            assert (await c.post("/register", json=body, headers=ops)).status_code == 201
            assert (await c.post("/register", json=body)).status_code == 201  # not a browser


async def test_a_given_client_is_shared_and_left_open(
    web_redis_url: str, prefix: str, topic: str
) -> None:
    shared = Redis.from_url(web_redis_url)
    try:
        app = create_app(redis=shared, key_prefix=prefix)
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                r = await c.post("/jobs", json={"topic": topic, "payload": 1})
                assert r.status_code == 201
        assert await shared.ping()  # still usable: the app did not close it
        assert await shared.exists(TopicKeys(topic).meta)
    finally:
        await shared.aclose()
