"""Temporary alias (removed once benches import mcp_db._redis_server)."""

from mcp_db._redis_server import RedisServer, free_port  # noqa: F401
