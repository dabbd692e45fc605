"""The only place errors become HTTP answers: RFC 9457 ``application/problem+json``.

Routes raise library errors (:mod:`splitdnn.errors`) or the service errors below; the
handlers installed by :func:`install_error_handlers` map each class to one status, so no
request ends in a bare 500 page or a hang.

    ServiceError
    ├── UnauthorizedError       missing or wrong bearer token (401)
    ├── NotReadyError           bundle still loading (503, Retry-After)
    ├── OverloadedError         too many requests in flight (503, Retry-After)
    ├── PayloadTooLargeError    a request body over the limit (413)
    ├── UnsupportedMediaError   a body that is not an image or envelope (415)
    ├── InvalidRequestError     a request missing a required part (422)
    ├── UpstreamUnavailableError the next service is down or refused (503, Retry-After)
    │   ├── UpstreamServerError     it answered 500 or 502 (another try may succeed)
    │   ├── UpstreamTimeoutError    it missed the deadline (504)
    │   └── UpstreamBadAnswerError  it answered 200 without what we need (502)
    └── UpstreamProblem         the next service answered with a problem: relay it
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.context import REQUEST_ID, new_request_id
from splitdnn.errors import (
    BundleError,
    BundleMismatchError,
    ConfigError,
    CorruptImageError,
    DataError,
    ImageError,
    ImageTooLargeError,
    SplitDNNError,
    UnknownNameError,
    UnknownRateError,
    UnknownTaskError,
    UnsupportedImageError,
    WireError,
    WireLimitError,
    WireValueError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:splitdnn:problem:"
log = logging.getLogger("splitdnn.services")


class ServiceError(Exception):
    """An error a route raises on purpose; the class fixes status and problem type."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(
        self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class UnauthorizedError(ServiceError):
    status, slug, title = 401, "unauthorized", "Missing or wrong bearer token"

    def __init__(self, detail: str = "send 'Authorization: Bearer <token>'", **kw: Any) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"}, **kw)


class NotReadyError(ServiceError):
    status, slug, title = 503, "not-ready", "Service is not ready"

    def __init__(self, detail: str = "the bundle is still loading", **kw: Any) -> None:
        super().__init__(detail, headers={"Retry-After": "1"}, **kw)


class OverloadedError(ServiceError):
    status, slug, title = 503, "overloaded", "Too many requests in flight"

    def __init__(self, detail: str, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, **kw)


class PayloadTooLargeError(ServiceError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaError(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidRequestError(ServiceError):
    status, slug, title = 422, "validation-error", "Invalid request"


class UpstreamUnavailableError(ServiceError):
    """The next service is down or refused; as a 503 (not its 504/502 subclasses) it says
    when to try again, like every other 503 here."""

    status, slug, title = 503, "upstream-unavailable", "The next service is unavailable"
    retry_after_s = 1

    def __init__(self, detail: str = "", **kw: Any) -> None:
        super().__init__(detail, **kw)
        if self.status == 503:
            self.headers.setdefault("Retry-After", str(self.retry_after_s))


class UpstreamServerError(UpstreamUnavailableError):
    """The next service answered 500 or 502: an error of one replica (a Ray tail's proxy
    answers 500 for a replica that died mid-request), so the head tries again."""


class UpstreamTimeoutError(UpstreamUnavailableError):
    status, slug, title = 504, "upstream-timeout", "The next service missed the deadline"


class UpstreamBadAnswerError(UpstreamUnavailableError):
    """The next service answered 200 with a body that lacks the fields we need; the head
    falls back to local like for any unavailable tail, else answers 502."""

    status, slug, title = 502, "bad-upstream-answer", "The next service answered nonsense"


class UpstreamProblem(ServiceError):
    """A problem+json answer from the next service, relayed with its status."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(str(body.get("detail", "")), headers=headers)
        self.status = status
        self.body = body


#: Library error class -> (status, slug, title); the first matching class in MRO order wins.
LIBRARY_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    UnsupportedImageError: (415, "unsupported-image", "Not an image"),
    CorruptImageError: (400, "corrupt-image", "Truncated or corrupt image"),
    ImageTooLargeError: (413, "image-too-large", "Image too large"),
    ImageError: (400, "bad-image", "Image cannot be used"),
    BundleMismatchError: (409, "bundle-mismatch", "Head and tail hold different bundles"),
    BundleError: (503, "bundle-error", "The model bundle is unusable"),
    WireLimitError: (413, "envelope-too-large", "Envelope, raw size or batch over the limit"),
    WireValueError: (422, "non-finite-tensor", "NaN or infinity in the tensor"),
    WireError: (400, "bad-envelope", "Bad tensor envelope"),
    UnknownTaskError: (422, "unknown-task", "No such task in this bundle"),
    UnknownRateError: (422, "unknown-rate", "No such split rate in this bundle"),
    UnknownNameError: (404, "unknown-name", "No such name"),
    ConfigError: (422, "bad-config", "Bad configuration"),
    DataError: (400, "bad-data", "Bad data"),
    SplitDNNError: (400, "splitdnn-error", "Request failed"),
}


def classify_library_error(exc: Exception) -> tuple[int, str, str]:
    for cls in type(exc).__mro__:
        if cls in LIBRARY_ERRORS:
            return LIBRARY_ERRORS[cls]
    return 500, "internal-error", "Internal error"


def problem(
    request: Request,
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """One problem+json response carrying the request id."""
    body = problem_body(
        status,
        slug,
        title,
        detail,
        instance=request.url.path,
        request_id=getattr(request.state, "request_id", None),
        **extra,
    )
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def problem_body(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str | None,
    request_id: str | None,
    **extra: Any,
) -> dict[str, Any]:
    """The problem+json document; also what the HTTP parser's own refusals carry
    (:mod:`services.common.http`), which no route sees.

    ``error`` repeats the detail: Open Inference Protocol clients (``tritonclient``, KServe)
    read that field of an error body.
    """
    return {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "error": detail or title,
        "instance": instance,
        "request_id": request_id,
        **extra,
    }


#: What uvicorn's HTTP parser refuses before any route runs (:mod:`services.common.http`).
PARSER_PROBLEMS: dict[int, tuple[str, str]] = {
    400: ("bad-http-request", "Malformed HTTP request"),
    414: ("uri-too-long", "Request URL too long"),
    431: ("request-header-too-large", "Request line and headers too large"),
}


def parser_refusal(status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP/1.1 response (``connection: close``) with a problem+json body, for a
    request the parser refused (no route, no middleware); ``headers``: the server's own
    (``server``, ``date``)."""
    slug, title = PARSER_PROBLEMS[status]
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


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; call once in every ``create_app``."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        if isinstance(exc, UpstreamProblem):
            # The caller's own path, not the next service's internal route (/infer/split).
            request_id = getattr(request.state, "request_id", None)
            body = {**exc.body, "instance": request.url.path, "request_id": request_id}
            body.setdefault("error", str(body.get("detail") or body.get("title") or ""))
            return JSONResponse(
                body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM_JSON
            )
        return problem(
            request, exc.status, exc.slug, exc.title, exc.detail, exc.headers, **exc.extra
        )

    @app.exception_handler(SplitDNNError)
    async def _library(request: Request, exc: SplitDNNError) -> JSONResponse:
        status, slug, title = classify_library_error(exc)
        return problem(request, status, slug, title, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(request, 422, "validation-error", "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem(
            request, exc.status_code, slug, str(exc.detail), str(exc.detail), exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return problem(request, 500, "internal-error", "Internal error", type(exc).__name__)
