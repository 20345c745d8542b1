from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_db._redis_server import RedisServer
from tests._redis_deployments import RedisCluster


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the tests that do not stop it; tests use their own prefix."""
    server = RedisServer().start()
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
