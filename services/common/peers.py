"""Which device connected: uvicorn's HTTP protocol, logging the client certificate's subject.

Under mutual TLS the client certificate is the device's identity, but uvicorn hands the app
no certificate (the ASGI scope has only the peer's address). This protocol class, given to
uvicorn as ``http=`` (``--http services.common.peers:PeerLoggingProtocol``; see
:func:`splitdnn.serve.uvicorn_tls`), logs it once per connection, after the handshake:

    splitdnn.peers: device 'head-0017' (issuer 'splitdnn development CA') connected from 10.0.0.7
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

try:  # uvicorn's own choice order: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - the serve extra installs httptools
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

log = logging.getLogger("splitdnn.peers")


def _name(rdns: Any) -> str:
    """The common name of an ``ssl.getpeercert()`` distinguished name (else all of it)."""
    pairs = [pair for rdn in rdns or () for pair in rdn]
    common = [value for key, value in pairs if key == "commonName"]
    return common[0] if common else ", ".join(f"{k}={v}" for k, v in pairs)


class PeerLoggingProtocol(_Base):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol, plus one log line per TLS connection naming the client."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cert = transport.get_extra_info("peercert")
        if cert:
            peer = transport.get_extra_info("peername")
            log.info(
                "device %r (issuer %r) connected from %s",
                _name(cert.get("subject")),
                _name(cert.get("issuer")),
                peer[0] if peer else "?",
            )
