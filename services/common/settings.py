"""Settings shared by head and tail, read from ``SPLITDNN_*`` environment variables.

Each service subclasses :class:`ServiceSettings` with its own prefix
(``SPLITDNN_TAIL_``, ``SPLITDNN_HEAD_``, ``SPLITDNN_GATEWAY_``); the two values both
parties must agree on have one unprefixed name each:

=====================  ===================================================  ============
``SPLITDNN_BUNDLE``    bundle directory                                     packaged default
``SPLITDNN_TOKEN``     shared bearer token between head and tail; unset =   unset
                       no authentication
``SPLITDNN_TLS_CERT``  this service's certificate (PEM): it serves HTTPS    unset
``SPLITDNN_TLS_KEY``   its key                                              unset
``SPLITDNN_TLS_CA``    the CA that signed the peers' certificates: servers  unset (system
                       called are verified against it; with a certificate,  CAs for
                       tail, head and members accept only clients it signed  servers)
=====================  ===================================================  ============
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitdnn.bundle import default_bundle_path
from splitdnn.tls import client_context


def shared(name: str, description: str, **default: Any) -> Any:
    """A field read from the unprefixed ``SPLITDNN_<NAME>`` (the table above), not from the
    service's own prefix: a value every service of a deployment must agree on. ``default``:
    ``default=`` or ``default_factory=`` (None when neither is given)."""
    return Field(
        **(default or {"default": None}),
        validation_alias=f"SPLITDNN_{name}",
        description=description,
    )


def onnx_threads(description: str) -> Any:
    """A thread count of ONNX Runtime; 0 (the default) lets the service size it."""
    return Field(default=0, ge=0, description=f"ONNX Runtime {description}")


class BaseServiceSettings(BaseSettings):
    """Common configuration switches; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    max_image_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="Largest accepted image upload (413 above)."
    )
    max_pixels: int = Field(
        default=64_000_000, gt=0, description="Largest decoded image (413 above)."
    )
    max_in_flight: int = Field(
        default=8, gt=0, description="Requests processed at once; more get 503 + Retry-After."
    )
    tls_cert: Path | None = shared(
        "TLS_CERT",
        "This service's certificate (PEM): served, and shown to a server that asks for a "
        "client certificate (mutual TLS).",
    )
    tls_key: Path | None = shared("TLS_KEY", "Its private key (PEM).")
    tls_ca: Path | None = shared(
        "TLS_CA",
        "CA (PEM) the servers this service calls must chain to; unset: the system's CAs. "
        "Verification is never off.",
    )

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``SPLITDNN_TLS_CERT=`` (compose without ``TLS_DIR``) means no TLS, not ``.``."""
        return None if value == "" else value

    def client_tls(self) -> ssl.SSLContext:
        """How this service verifies the servers it calls (https:// URLs) and proves
        who it is to them."""
        return client_context(self.tls_ca, self.tls_cert, self.tls_key)


class ServiceSettings(BaseServiceSettings):
    """Settings of a service that loads a bundle and runs ONNX models."""

    bundle: Path = shared(
        "BUNDLE",
        "Bundle directory (manifest.json + ONNX files).",
        default_factory=default_bundle_path,
    )
    token: SecretStr | None = shared(
        "TOKEN", "Shared bearer token between head and tail; unset disables auth."
    )
    intra_op_threads: int = onnx_threads(
        "intra-op threads; 0 = the whole cores of the process's cgroup quota within its CPU "
        "affinity (splitdnn/cpus.py)."
    )
    inter_op_threads: int = onnx_threads("inter-op threads; 0 = 1 (sessions run sequentially).")
    load_in_background: bool = Field(
        default=True,
        description="Load and warm up after the server starts, so /v2/health/live answers "
        "at once and /v2/health/ready turns 200 when done.",
    )
