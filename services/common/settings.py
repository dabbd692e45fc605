"""Settings shared by head and tail, read from ``SPLITDNN_*`` environment variables.

Each service subclasses :class:`ServiceSettings` with its own prefix
(``SPLITDNN_TAIL_``, ``SPLITDNN_HEAD_``, ``SPLITDNN_GATEWAY_``); the two values both
parties must agree on have one unprefixed name each:

=====================  ===================================================  ============
``SPLITDNN_BUNDLE``    bundle directory                                     packaged default
``SPLITDNN_TOKEN``     shared bearer token between head and tail; unset =   unset
                       no authentication
=====================  ===================================================  ============
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitdnn.bundle import default_bundle_path


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


class ServiceSettings(BaseServiceSettings):
    """Settings of a service that loads a bundle and runs ONNX models."""

    bundle: Path = Field(
        default_factory=default_bundle_path,
        validation_alias="SPLITDNN_BUNDLE",  # no prefix: head and tail share it
        description="Bundle directory (manifest.json + ONNX files).",
    )
    token: SecretStr | None = Field(
        default=None,
        validation_alias="SPLITDNN_TOKEN",
        description="Shared bearer token between head and tail; unset disables auth.",
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime intra-op threads; 0 = the whole cores of the process's "
        "cgroup quota within its CPU affinity (splitdnn/cpus.py).",
    )
    inter_op_threads: int = Field(
        default=0,
        ge=0,
        description="ONNX Runtime inter-op threads; 0 = 1 (sessions run sequentially).",
    )
    load_in_background: bool = Field(
        default=True,
        description="Load and warm up after the server starts, so /v2/health/live answers "
        "at once and /v2/health/ready turns 200 when done.",
    )
