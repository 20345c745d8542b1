from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_db._redis_server import RedisServer


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
