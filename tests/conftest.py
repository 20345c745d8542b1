from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_db._sdk import SDK_MAJOR
from tests._redis_deployments import RedisCluster, TlsRedis
from tests.support.redis_server import RedisServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``one_sdk_line`` prove what does not touch the SDK (the Rust relay's
    frames, a Redis Cluster's pub/sub hub, the ``mcp-db`` command): they run on the newest
    SDK line only, which keeps three virtualenvs' runs inside CI's time."""
    if SDK_MAJOR >= 2:
        return
    skip = pytest.mark.skip(reason="does not depend on the SDK: runs on the newest SDK line")
    for item in items:
        if item.get_closest_marker("one_sdk_line"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the tests that do not stop it; tests use their own prefix."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, append-only with fsync always: one it may kill
    (kill -9 loses nothing), restart, pause or fill."""
    server = RedisServer(persistent=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to the test, so tests sharing a Redis never see each other."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)
    return f"t-{name[:80]}"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of three primaries, shared like ``redis_server``."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def tls_redis() -> Iterator[TlsRedis]:
    """A redis-server that speaks TLS only and wants a user and password, shared like
    ``redis_server``."""
    server = TlsRedis().start()
    yield server
    server.cleanup()
