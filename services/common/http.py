"""uvicorn's HTTP protocols with the parser's own refusals answered as problem+json.

uvicorn refuses a request its HTTP parser rejects before any app code runs, with a
plain-text ``400 Invalid HTTP request received.``: httptools (what uvicorn picks when it is
installed, as the ``serve`` extra does) rejects a URL over 65,535 bytes, because
``httptools.parse_url`` keeps 16-bit offsets; h11 rejects a request head over
``h11_max_incomplete_event_size`` (16 KiB by default) that has not fully arrived. So a
100 KB ``?mode=`` never reached the services' own 422. These subclasses keep both parsers and
their limits and change only the answer: 414 for a URL over the limit, 431 for a request
head over h11's, 400 for anything else malformed, each as problem+json with a request id.
``splitdnn serve`` hands uvicorn :data:`splitdnn.serve.HTTP_PROTOCOL` (``--http``).
"""

from __future__ import annotations

import json
from http import HTTPStatus

from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.common.context import REQUEST_ID, new_request_id
from services.common.errors import PROBLEM_JSON, problem_body

#: The longest URL httptools can parse (``http_parser_url`` has 16-bit offsets).
MAX_URL_BYTES = 65_535
_PROBLEMS = {
    400: ("bad-http-request", "Malformed HTTP request"),
    414: ("uri-too-long", "Request URL too long"),
    431: ("request-header-too-large", "Request line and headers too large"),
}


def refusal(status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response (``connection: close``) with a problem+json body; ``headers``
    are the server's defaults (``server``, ``date``)."""
    slug, title = _PROBLEMS[status]
    request_id = new_request_id()
    body = problem_body(status, slug, title, detail, instance=None, request_id=request_id)
    payload = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [
        b"content-type: " + PROBLEM_JSON.encode(),
        b"content-length: %d" % len(payload),
        REQUEST_ID.lower().encode() + b": " + request_id.encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def _url_too_long(length: int) -> tuple[int, str]:
    return 414, (
        f"the request URL is {length} bytes; this server parses at most {MAX_URL_BYTES} "
        "(every query parameter of the services takes a short value)"
    )


_MALFORMED = (400, "the request is not valid HTTP/1.1")


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol; parser refusals as problem+json."""

    def send_400_response(self, msg: str) -> None:
        buffered = self.conn.trailing_data[0]
        limit = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        status, detail = _MALFORMED
        if len(buffered) > limit and b"\r\n" not in buffered:
            status, detail = _url_too_long(len(buffered))
        elif len(buffered) > limit:
            status = 431
            detail = f"the request line and headers are over {limit} bytes"
        self.transport.write(refusal(status, detail, self.server_state.default_headers))
        self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn runs h11, so do we
    ProblemHTTPProtocol: type = ProblemH11Protocol
else:

    class ProblemHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol; parser refusals as problem+json."""

        def send_400_response(self, msg: str) -> None:
            url = getattr(self, "url", b"")
            status, detail = _url_too_long(len(url)) if len(url) > MAX_URL_BYTES else _MALFORMED
            self.transport.write(refusal(status, detail, self.server_state.default_headers))
            self.transport.close()

    ProblemHTTPProtocol = ProblemHttpToolsProtocol
