"""An HTTP sink inside a network namespace, for the tests that shape a link (import as
``from netns_helpers import ...``)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

#: A stdlib HTTP sink: reads the body, answers with its length.
SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = str(n).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Sink).serve_forever()
"""


def wait_for_port(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=b"x", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


@contextmanager
def http_sink(link, port: int) -> Iterator[str]:
    """:data:`SINK` running inside ``link``'s namespace; yields its URL, stops it on exit."""
    sink = subprocess.Popen(link.exec_argv([sys.executable, "-c", SINK, link.ns_ip, str(port)]))
    try:
        url = f"http://{link.ns_ip}:{port}/"
        wait_for_port(url)
        yield url
    finally:
        sink.kill()
        sink.wait()
