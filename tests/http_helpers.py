"""A stdlib HTTP server answering in a thread, for tests that need a real socket (import as
``from http_helpers import ...``)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def answering(server: http.server.ThreadingHTTPServer) -> Iterator[str]:
    """``server`` answering in a daemon thread (so is each of its connections): its base
    URL on 127.0.0.1; shut down and closed on exit."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
