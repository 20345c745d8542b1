"""Several nodes behind nginx serve one session as if they were one server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from mcp_db._redis_server import RedisServer
from tests._client import AUTO_RESUME, PROTOCOL, client_session, result_text
from tests._cluster import Cluster
from tests.test_resume_e2e import RawSession


@pytest.fixture
def cluster(redis_server: RedisServer, prefix: str) -> Iterator[Cluster]:
    c = Cluster(redis_server, prefix, size=3).start()
    yield c
    c.stop()


async def test_one_session_is_served_by_every_node(cluster: Cluster) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with client_session(cluster.url) as session:
        names = set()
        for _ in range(6):
            tools = await session.list_tools()
            assert {"steps", "echo", "whoami"} <= {t.name for t in tools.tools}
            names.add(result_text(await session.call_tool("whoami", {})))
            resource = await session.read_resource("note://greeting")
            assert resource.contents[0].text == "hello from a resource"
            prompt = await session.get_prompt("review", {"code": "x = 1"})
            assert "Please review: x = 1" in str(prompt.messages[0].content)
        if AUTO_RESUME:
            result = await session.call_tool("steps", {"n": 20}, progress_callback=on_progress)
            assert result_text(result) == "done 20"
            assert seen == list(range(20))
    client_name = {n.split(" on ")[0] for n in names}
    assert len(client_name) == 1, names
    assert len({n.split(" on ")[1] for n in names}) == 3, f"every node served the session: {names}"
    assert len(cluster.served_by()) == 3


async def test_delete_through_one_node_gives_404_on_every_node(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        session = await RawSession(http, cluster.url).open()
        assert await session.event_ids_of_call()  # served fine
        for node in cluster.nodes:  # every node serves it
            response = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
                headers=session.headers(),
            )
            assert response.status_code == 200, response.text
        deleted = await http.delete(cluster.nodes[0].url, headers=session.headers())
        assert deleted.status_code == 200
        for node in cluster.nodes:
            response = await http.post(
                node.url,
                json={"jsonrpc": "2.0", "id": 6, "method": "tools/list"},
                headers=session.headers(),
            )
            assert response.status_code == 404
            assert response.json()["error"]["message"] == "Session not found"
    assert cluster.session_counts() == [0, 0, 0]


@pytest.mark.parametrize("forged", ["random", "uuid", "long", "foreign-prefix"])
async def test_forged_session_ids_get_404_everywhere_and_create_nothing(
    cluster: Cluster, forged: str
) -> None:
    session_id = {
        "random": "not-a-session",
        "uuid": uuid.uuid4().hex,
        "long": "a" * 900,
        "foreign-prefix": "00000000000000000000000000000000",
    }[forged]
    async with httpx.AsyncClient(timeout=10) as http:
        for node in cluster.nodes:
            for method, body in (
                ("POST", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
                ("GET", None),
                ("DELETE", None),
            ):
                response = await http.request(
                    method,
                    node.url,
                    json=body,
                    headers={
                        "accept": "application/json, text/event-stream",
                        "mcp-session-id": session_id,
                        "mcp-protocol-version": PROTOCOL,
                    },
                )
                assert response.status_code == 404, (method, response.text)
    assert cluster.session_counts() == [0, 0, 0]
