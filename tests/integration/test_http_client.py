"""The outgoing HTTP client of callbacks and surveys over real sockets: a
server that closes the connection after each answer without saying so
(HTTP/1.0) must not lose POSTs sent on a pooled connection it closed."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import pytest_twisted

from switchd.api.webhooks import FreshConnectionRetry, default_http_client


@pytest.fixture
def http10_server():
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", bodies
    server.shutdown()
    server.server_close()


@pytest_twisted.ensureDeferred
async def test_posts_to_an_http10_server_back_to_back_all_arrive(http10_server):
    from twisted.internet import reactor

    url, bodies = http10_server
    client = default_http_client(reactor)
    assert isinstance(client, FreshConnectionRetry)
    codes = []
    for n in range(40):
        response = await client.request("POST", url, data=str(n).encode())
        await response.content()
        codes.append(response.code)
    assert codes == [200] * 40
    assert sorted(int(b) for b in bodies) == list(range(40))
    await client.client._agent._pool.closeCachedConnections()
