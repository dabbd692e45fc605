"""``/docs`` from local files: Swagger UI's script and style come with the Python package
``swagger-ui-bundle``, so the page works on an edge network without internet (FastAPI's
own ``/docs`` loads them from a public CDN). ReDoc, which has no local copy, is off.

FastAPI's self-hosting recipe ("Custom Docs UI Static Assets"), with the two files served by
ordinary routes instead of a static mount, so ``/metrics`` counts them under their route.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}


def swagger_ui_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def install_local_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at ``docs_url`` with its assets under ``{docs_url}/assets/``."""

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{docs_url}/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{docs_url}/assets/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get(docs_url + "/assets/{name}", include_in_schema=False)
    def swagger_asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(swagger_ui_dir() / name, media_type=ASSETS[name])
