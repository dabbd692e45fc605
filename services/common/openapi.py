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
    "image/webp": {"schema": {"type": "string", "format": "binary"}},
}

#: Bodies of the tail's ``/v2/models/{name}/infer``: the msgpack envelope (splitdnn.wire),
#: an Open Inference Protocol v2 JSON request, or one with the binary tensor extension.
INFER_CONTENT: dict[str, Any] = {
    "application/vnd.msgpack": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "datatype", "shape"],
                        "properties": {
                            "name": {"type": "string"},
                            "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "parameters": {"type": "object"},
                            "data": {"type": "array"},
                        },
                    },
                },
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}


#: Every error body (:mod:`services.common.errors`): RFC 9457 fields, the request id, and
#: ``error`` (the detail again) for Open Inference Protocol clients.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "error"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "error": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
    },
}
PROBLEM_CONTENT: dict[str, Any] = {"application/problem+json": {"schema": PROBLEM_SCHEMA}}


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` from status -> why; every error body is problem+json
    (:mod:`services.common.errors`), so the description is all that differs."""
    return {
        status: {"description": why, "content": PROBLEM_CONTENT}
        for status, why in descriptions.items()
    }
