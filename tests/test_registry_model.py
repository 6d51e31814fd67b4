"""The registry against an in-memory model: a hypothesis state machine on a real Redis.

Every rule runs the same operation on the registry and on a plain dict; the
invariants compare what the registry lists, counts and returns with the model
after every step. Ages are kept out of the model by using timeouts that are
either far longer than a test run (nothing is stale) or zero (everything is).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from redisaq_core import ServiceInfo, ServiceRegistry, ServiceStatus

T = TypeVar("T")

IDS = st.sampled_from(["a", "b", "c", "node-1", "node/2"])
TYPES = st.sampled_from(["inference", "worker", "batch"])
STATUSES = st.sampled_from(list(ServiceStatus))
METADATA = st.dictionaries(
    st.sampled_from(["model", "gpu", "n", "tags"]),
    st.one_of(st.integers(-5, 5), st.text(max_size=4), st.lists(st.booleans(), max_size=2)),
    max_size=3,
)
LONG = 3600.0


@dataclass
class Model:
    """What the registry should hold: id -> (host, port, type, status, metadata, last_seen)."""

    services: dict[str, ServiceInfo] = field(default_factory=dict)


class RegistryMachine(RuleBasedStateMachine):
    redis_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.registry = ServiceRegistry(
            redis_url=self.redis_url, key_prefix=f"model-{uuid.uuid4().hex[:10]}:"
        )
        self.model = Model()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    @initialize()
    def start(self) -> None:
        self.run(self.registry.connect())

    def teardown(self) -> None:
        try:
            if self.registry.connected:
                self.run(self.registry.clear_all())
            self.run(self.registry.aclose())
        finally:
            self.loop.close()

    # ---- rules ----------------------------------------------------------------------------

    @rule(
        sid=IDS, stype=TYPES, status=STATUSES, metadata=METADATA,
        port=st.integers(0, 65535), host=st.sampled_from(["h1", "10.0.0.1"]),
    )  # fmt: skip
    def register(
        self, sid: str, stype: str, status: ServiceStatus, metadata: dict[str, Any],
        port: int, host: str,
    ) -> None:  # fmt: skip
        info = ServiceInfo(sid, host, port, stype, status, metadata=metadata)
        assert self.run(self.registry.register_service(info)) is True
        self.model.services[sid] = ServiceInfo(sid, host, port, stype, status,
                                               metadata=dict(metadata))  # fmt: skip

    @rule(sid=IDS)
    def deregister(self, sid: str) -> None:
        assert self.run(self.registry.deregister_service(sid)) is (sid in self.model.services)
        self.model.services.pop(sid, None)

    @rule(sid=IDS)
    def heartbeat(self, sid: str) -> None:
        assert self.run(self.registry.heartbeat(sid)) is (sid in self.model.services)

    @rule(sid=IDS, status=STATUSES, metadata=st.one_of(st.none(), METADATA))
    def update_health(
        self, sid: str, status: ServiceStatus, metadata: dict[str, Any] | None
    ) -> None:
        ok = self.run(self.registry.update_health(sid, status, metadata))
        assert ok is (sid in self.model.services)
        if ok:
            m = self.model.services[sid]
            m.status = status.value
            m.metadata.update(metadata or {})

    @rule()
    def cleanup_nothing_stale(self) -> None:
        assert self.run(self.registry.cleanup_stale_services(timeout_seconds=LONG)) == 0

    @rule()
    def cleanup_everything(self) -> None:
        removed = self.run(self.registry.cleanup_stale_services(timeout_seconds=0))
        assert removed == len(self.model.services)
        self.model.services.clear()

    @rule()
    def clear_all(self) -> None:
        assert self.run(self.registry.clear_all()) is True
        self.model.services.clear()

    # ---- invariants -------------------------------------------------------------------------

    def _expected(
        self, stype: str | None = None, status: str | None = None
    ) -> list[tuple[Any, ...]]:
        return sorted(
            (s.service_id, s.host, s.port, s.service_type, s.status, s.metadata)
            for s in self.model.services.values()
            if (stype is None or s.service_type == stype) and (status is None or s.status == status)
        )

    @staticmethod
    def _shape(services: list[ServiceInfo]) -> list[tuple[Any, ...]]:
        return [(s.service_id, s.host, s.port, s.service_type, s.status, s.metadata)
                for s in services]  # fmt: skip

    @invariant()
    def listings_match(self) -> None:
        if not self.registry.connected:
            return
        reg = self.registry
        assert self._shape(self.run(reg.list_services())) == self._expected()
        for stype in ("inference", "worker", "batch"):
            assert self._shape(self.run(reg.list_services(service_type=stype))) == self._expected(
                stype
            )
            assert self.run(reg.get_service_count(service_type=stype)) == len(self._expected(stype))
        assert self._shape(self.run(reg.list_services(status_filter="unhealthy"))) == (
            self._expected(status="unhealthy")
        )
        assert self._shape(self.run(reg.get_healthy_services(timeout_seconds=LONG))) == (
            self._expected(status="healthy")
        )
        assert self.run(reg.get_service_count()) == len(self.model.services)
        assert self.run(reg.get_service_types()) == sorted(
            {s.service_type for s in self.model.services.values()}
        )

    @invariant()
    def records_match(self) -> None:
        if not self.registry.connected:
            return
        for sid in ("a", "node/2"):
            got = self.run(self.registry.get_service(sid))
            want = self.model.services.get(sid)
            if want is None:
                assert got is None
            else:
                assert got is not None and got.last_seen is not None
                assert self._shape([got]) == self._shape([want])


def test_registry_matches_the_model(redis_url: str) -> None:
    RegistryMachine.redis_url = redis_url
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


pytestmark = pytest.mark.filterwarnings("error")
