"""uvicorn's HTTP protocols with the parser's own refusals answered as problem+json.

uvicorn refuses a request its HTTP parser rejects before any app code runs, with a
plain-text ``400 Invalid HTTP request received.``: httptools (what uvicorn picks when it is
installed, as the ``serve`` extra does) rejects a URL over 65,535 bytes, because
``httptools.parse_url`` keeps 16-bit offsets; h11 rejects a request head over
``h11_max_incomplete_event_size`` (16 KiB by default) that has not fully arrived. So a
100 KB ``?mode=`` never reached the services' own 422. These subclasses keep both parsers and
their limits and change only the answer: 414 for a URL over the limit, 431 for a request
head over h11's, 400 for anything else malformed, each as problem+json with a request id.
:class:`ServiceHTTPProtocol` adds one log line per mutual-TLS connection naming the client
certificate (:mod:`services.common.peers`); ``splitdnn serve`` hands it to uvicorn
(:data:`splitdnn.serve.HTTP_PROTOCOL`, ``--http``) for every service, with TLS or without.
"""

from __future__ import annotations

from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from services.common.errors import parser_refusal
from services.common.peers import log_peer

#: The longest URL httptools can parse (``http_parser_url`` has 16-bit offsets).
MAX_URL_BYTES = 65_535


def _url_too_long(length: int, limit: int) -> tuple[int, str]:
    return 414, (
        f"the request URL is {length}+ bytes; this server parses at most {limit} "
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
            status, detail = _url_too_long(len(buffered), limit)
        elif len(buffered) > limit:
            status = 431
            detail = f"the request line and headers are over {limit} bytes"
        self.transport.write(parser_refusal(status, detail, self.server_state.default_headers))
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
            too_long = len(url) > MAX_URL_BYTES
            status, detail = _url_too_long(len(url), MAX_URL_BYTES) if too_long else _MALFORMED
            self.transport.write(parser_refusal(status, detail, self.server_state.default_headers))
            self.transport.close()

    ProblemHTTPProtocol = ProblemHttpToolsProtocol


class ServiceHTTPProtocol(ProblemHTTPProtocol):  # type: ignore[misc, valid-type]
    """The services' protocol: parser refusals as problem+json, and the client certificate
    of each mutual-TLS connection logged by name."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def, override]
        super().connection_made(transport)
        log_peer(transport)
