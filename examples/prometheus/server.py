"""An MCP server on many nodes with mcp-db, its metrics scraped by Prometheus.

OpenTelemetry's SDK with its Prometheus reader collects the ``mcp_db`` instruments, and
``/metrics`` on the same port serves them (the MCP endpoint stays at ``/mcp``)::

    MCP_DB_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.prometheus.server:app --port 8000
    curl -s http://127.0.0.1:8000/metrics | grep '^mcp_db_'

Needs ``pip install "mcp-db[otel]" uvicorn`` (opentelemetry-sdk,
opentelemetry-exporter-prometheus, prometheus-client). Works with mcp 1.12.4 through 2.x.

Environment: ``MCP_DB_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``),
``MCP_DB_PREFIX`` (key prefix, default ``mcp``), ``OTEL_SERVICE_NAME`` (the ``job``-like
``service_name`` label of ``target_info``; default ``mcp-server``).

Each process serves its own counters: run one process per node (container, pod) and let
Prometheus scrape every node. Under ``uvicorn --workers N`` a scrape would reach one worker
at random; push with OpenTelemetry's OTLP exporter instead there.
"""

# No `from __future__ import annotations`: FastMCP 1.12 inspects real annotations.
import os
from typing import Any

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import make_asgi_app

from mcp_db import RedisEventStore, RedisSubscriptionBus, SessionMiddleware

# The reader registers with prometheus_client's default registry, which make_asgi_app()
# serves. mcp-db's instruments report to whatever provider is set, whenever it is set.
resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "mcp-server")})
metrics.set_meter_provider(
    MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
)

store = RedisEventStore(
    os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("MCP_DB_PREFIX", "mcp"),
)
bus = RedisSubscriptionBus(store)

server: Any
try:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("mcp-db-prometheus", subscriptions=bus)
    SDK_2 = True
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("mcp-db-prometheus", event_store=store)
    SDK_2 = False


@server.tool()
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@server.tool()
async def edit_note(text: str) -> str:
    """Tells every client subscribed to ``note://hello``, on every node, that it changed."""
    await bus.notify_resource_updated("note://hello")
    return "saved"


@server.tool()
def where() -> str:
    """Which process served this request."""
    return f"pid {os.getpid()}"


mcp_app = SessionMiddleware(
    server.streamable_http_app(event_store=store) if SDK_2 else server.streamable_http_app(),
    store=store,
    bus=bus,
)
metrics_app = make_asgi_app()


async def app(scope: Any, receive: Any, send: Any) -> None:
    """``/metrics`` for Prometheus; everything else (``/mcp``, the lifespan) to the server."""
    if scope["type"] == "http" and scope["path"] == "/metrics":
        await metrics_app(scope, receive, send)
    else:
        await mcp_app(scope, receive, send)
