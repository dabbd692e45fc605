"""OpenAPI fragments the services' routes share, so the documents describe them alike.

Which statuses a route can answer, and why, differ per service and stay with the routes as
data; the shape FastAPI wants for them, and the raw image body, are spelled out once here.
"""

from __future__ import annotations

from typing import Any

#: Image media types for ``openapi_extra={"requestBody": {"content": ...}}``. The routes read
#: the raw body themselves (size-capped), so FastAPI cannot infer it from a parameter.
IMAGE_CONTENT: dict[str, Any] = {
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` from status -> why; every error body is problem+json
    (:mod:`services.common.errors`), so the description is all that differs."""
    return {status: {"description": why} for status, why in descriptions.items()}
