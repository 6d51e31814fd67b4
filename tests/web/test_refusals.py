"""Request bodies and queries the gateway refuses with a 422 naming the field.

Numbers JSON can't hold (``NaN``, ``Infinity``, ``1e400``, which Python's parser
takes), integers past 64 bits, unknown fields and cursors past Redis's ids.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

JSON = {"content-type": "application/json"}


def _refused(response: httpx.Response) -> list[list[Any]]:
    """The locations a 422 names (and it echoes no input)."""
    assert response.status_code == 422, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert all("input" not in error for error in detail), detail
    return [error["loc"] for error in detail]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/jobs", '{"topic": "t", "payload": 1, "delay": 1e400}', "delay"),
        ("POST", "/jobs", '{"topic": "t", "payload": 1, "timeout": Infinity}', "timeout"),
        ("POST", "/jobs", '{"topic": "t", "payload": 1, "timeout": NaN}', "timeout"),
        ("POST", "/jobs", '{"topic": "t", "payload": 1, "priority": NaN}', "priority"),
        ("POST", "/register", '{"name": "n", "host": "h", "port": 1e400}', "port"),
        ("PUT", "/schedules/s", '{"topic": "t", "every": Infinity}', "every"),
        ("PUT", "/schedules/s", '{"topic": "t", "every": 5, "grace": -Infinity}', "grace"),
    ],
)
async def test_a_field_json_cannot_hold_is_a_422_naming_it(
    client: httpx.AsyncClient, method: str, path: str, body: str, field: str
) -> None:
    # The default answer echoed the input (inf) into JSON that refuses it: a 500.
    r = await client.request(method, path, content=body, headers=JSON)
    assert _refused(r) == [["body", field]]


@pytest.mark.parametrize(
    "number", ["NaN", "Infinity", "-Infinity", "1e400", '[1, {"x": NaN}]', str(2**70)]
)
async def test_a_payload_json_cannot_hold_is_refused_not_stored_as_null(
    client: httpx.AsyncClient, topic: str, number: str
) -> None:
    body = f'{{"topic": "{topic}", "payload": {{"x": {number}}}}}'
    assert _refused(await client.post("/jobs", content=body, headers=JSON)) == [["body", "payload"]]
    assert (await client.get(f"/topics/{topic}")).status_code == 404  # nothing written

    name = f"s-{uuid.uuid4().hex[:8]}"
    body = f'{{"topic": "{topic}", "every": 60, "payload": {{"x": {number}}}}}'
    r = await client.put(f"/schedules/{name}", content=body, headers=JSON)
    assert _refused(r) == [["body", "payload"]]
    assert (await client.get(f"/schedules/{name}")).status_code == 404


async def test_integers_past_64_bits_are_refused_at_registration(
    client: httpx.AsyncClient,
) -> None:
    # Accepted, they stopped every dashboard (whose encoder takes none).
    body = {"name": "n", "host": "h", "port": 1, "metadata": {"big": 2**70}}
    assert _refused(await client.post("/register", json=body)) == [["body", "metadata", "big"]]
    body["metadata"] = {"nested": [-(2**63) - 1]}
    loc = _refused(await client.post("/register", json=body))
    assert loc[0][:3] == ["body", "metadata", "nested"]
    assert (await client.get("/workers")).json() == []
    body["metadata"] = {"edges": [-(2**63), 2**64 - 1, 1.5, True, None]}
    assert (await client.post("/register", json=body)).status_code == 201


async def test_a_cursor_past_redis_ids_is_a_422_naming_it(
    client: httpx.AsyncClient, topic: str
) -> None:
    assert (await client.post("/jobs", json={"topic": topic, "payload": 1})).status_code == 201
    for cursor in ("0:99999999999999999999-1", "0:1-18446744073709551616"):
        r = await client.get(f"/dlq/{topic}", params={"cursor": cursor})
        assert _refused(r) == [["query", "cursor"]]
    r = await client.get(f"/dlq/{topic}", params={"cursor": "0:18446744073709551615-0"})
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/jobs", {"topic": "TOPIC", "payload": 1, "dealy": 3600}, "dealy"),
        ("/register", {"name": "n", "host": "h", "port": 1, "meta": {}}, "meta"),
        ("/dlq/TOPIC/replay", {"ids": ["1-1"], "everything": True}, "everything"),
        ("/dlq/TOPIC/replay", {"all": "yes"}, "all"),
        ("/dlq/TOPIC/replay", {"all": 1}, "all"),
    ],
)
async def test_unknown_fields_and_loose_booleans_are_named_not_ignored(
    client: httpx.AsyncClient, topic: str, path: str, body: dict[str, Any], field: str
) -> None:
    # A misspelt "delay" queued the job at once; "all": "yes" replayed every dead letter.
    assert (await client.post("/jobs", json={"topic": topic, "payload": 0})).status_code == 201
    body = {k: topic if v == "TOPIC" else v for k, v in body.items()}
    r = await client.post(path.replace("TOPIC", topic), json=body)
    assert _refused(r) == [["body", field]]
    assert len((await client.get("/jobs", params={"topic": topic})).json()) == 1
    assert (await client.get("/workers")).json() == []
