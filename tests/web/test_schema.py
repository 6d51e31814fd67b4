"""Property tests generated from the gateway's OpenAPI schema (schemathesis): no input gets a 500.

Each operation gets a handful of generated requests (valid and invalid ones)
sent to a real gateway; besides "no 5xx", the answers must match the schema
(status codes, content types, response bodies).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from redisaq_core.web import create_app  # noqa: E402
from tests.web.conftest import LiveGateway  # noqa: E402


@pytest.fixture(scope="module")
def schema_gateway(web_redis_url: str) -> Iterator[LiveGateway]:
    prefix = f"web-schema-{uuid.uuid4().hex[:8]}:"
    with LiveGateway(redis_url=web_redis_url, key_prefix=prefix, heartbeat_timeout=5.0) as g:
        yield g


# The schema is the app's own (no server needed to build it); requests go to a live one.
schema = schemathesis.openapi.from_dict(create_app().openapi())


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_no_input_gets_a_server_error(case: schemathesis.Case, schema_gateway: LiveGateway) -> None:
    case.call_and_validate(
        base_url=schema_gateway.url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=10,
    )
