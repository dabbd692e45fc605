"""How a service reads the answers of the next one (head → tail, gateway → head, gateway →
members): one status → exception mapping, one reading of a failed connection, one header.

=============================  ===============================  ==========================
the next service ...           exception                         the head then
=============================  ===============================  ==========================
answers 500 or 502             :class:`UpstreamServerError`      tries again, then falls back
answers 429 or another 5xx     :class:`UpstreamUnavailableError` falls back to local
answers another 4xx            :class:`UpstreamProblem`          relays it (409, 401, ...)
misses the deadline            :class:`UpstreamTimeoutError`     falls back to local
cannot be reached              :class:`UpstreamUnavailableError` falls back to local
=============================  ===============================  ==========================

The gateway is a proxy in front of the head, which has already chosen its fallback: it
relays every problem as the head answered it (``relay_all=True``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from services.common.errors import (
    ServiceError,
    UpstreamProblem,
    UpstreamServerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from splitdnn import tls

#: Statuses of one failing replica, worth another try (not an overload (503) or a deadline).
RETRIED = (500, 502)
#: Headers of a relayed problem that tell the caller what to do next.
RELAYED_HEADERS = ("retry-after", "www-authenticate")


def bearer(token: SecretStr | None) -> dict[str, str]:
    """The ``Authorization`` header carrying the shared token, or none when unset."""
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def problem_body(who: str, status: int, content: bytes) -> dict[str, Any]:
    """The next service's problem+json, or one made up from whatever it sent."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = content[:200].decode("utf-8", "replace")
        body = {"title": f"{who.capitalize()} error", "detail": text}
    body.setdefault("status", status)
    return body


def upstream_error(
    who: str,
    status: int,
    content: bytes,
    headers: Mapping[str, str],
    *,
    relay_all: bool = False,
) -> ServiceError:
    """The exception for an answer of ``who`` with error ``status`` (see the module table)."""
    body = problem_body(who, status, content)
    keep = {k: v for k, v in headers.items() if k.lower() in RELAYED_HEADERS}
    if relay_all or (status < 500 and status != 429):
        return UpstreamProblem(status, body, keep)
    detail = f"the {who} answered {status}: {body.get('detail', '')}"
    if status in RETRIED:
        return UpstreamServerError(detail)
    return UpstreamUnavailableError(detail)


def connection_error(
    who: str, url: str, exc: BaseException, client_cert: bool = False
) -> UpstreamUnavailableError:
    """A failed exchange with ``who`` at ``url``: the deadline (504), else unavailable (503),
    saying why in words that name the fix where one is known (see :func:`explain`);
    ``client_cert``: this service showed a TLS client certificate."""
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return UpstreamTimeoutError(f"the {who} at {url} missed the deadline: {exc!r}")
    why = explain(exc, url, client_cert)
    return UpstreamUnavailableError(f"the {who} at {url} is unreachable: {why}")


def explain(exc: BaseException, url: str, client_cert: bool = False) -> str:
    """What went wrong: the TLS reading with its fix (:func:`splitdnn.tls.explain`), else
    the innermost cause of ``exc``."""
    words = tls.explain(exc, url, client_cert)
    if words is not None:
        return words
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return repr(exc)
