"""Which device connected: the client certificate's subject, logged once per connection.

Under mutual TLS the client certificate is the device's identity, but uvicorn hands the app
no certificate (the ASGI scope has only the peer's address). The services' HTTP protocol
(:class:`services.common.http.ServiceHTTPProtocol`, what ``splitdnn serve`` gives uvicorn as
``--http``) calls :func:`log_peer` after the handshake:

    splitdnn.peers: device 'head-0017' (issuer 'splitdnn development CA') connected from 10.0.0.7
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("splitdnn.peers")


def _name(rdns: Any) -> str:
    """The common name of an ``ssl.getpeercert()`` distinguished name (else all of it)."""
    pairs = [pair for rdn in rdns or () for pair in rdn]
    common = [value for key, value in pairs if key == "commonName"]
    return common[0] if common else ", ".join(f"{k}={v}" for k, v in pairs)


def log_peer(transport: asyncio.BaseTransport) -> None:
    """One line naming the client certificate of a new TLS connection (none: nothing)."""
    cert = transport.get_extra_info("peercert")
    if cert:
        peer = transport.get_extra_info("peername")
        log.info(
            "device %r (issuer %r) connected from %s",
            _name(cert.get("subject")),
            _name(cert.get("issuer")),
            peer[0] if peer else "?",
        )
