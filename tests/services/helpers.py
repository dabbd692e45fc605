"""Helpers shared by the service tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import httpx


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict:
    """The response is RFC 9457 problem+json with this status (and type slug)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    if slug is not None:
        assert body["type"].endswith(":" + slug), body
    return body
