"""Head (device) settings: ``SPLITDNN_HEAD_*`` environment variables, plus the shared ones."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from splitdnn.serve import DEFAULT_URLS
from splitdnn.wire import Compression, SplitQuantisation


class HeadSettings(ServiceSettings):
    """Environment: ``SPLITDNN_BUNDLE``, ``SPLITDNN_TOKEN``, ``SPLITDNN_HEAD_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITDNN_HEAD_", populate_by_name=True, extra="ignore"
    )

    tail_url: str = Field(default=DEFAULT_URLS["tail"], description="Base URL of the tail.")
    max_in_flight: int = Field(
        default=2,
        gt=0,
        description="Classifications processed at once (a device has few cores); more get "
        "503 + Retry-After at once, before their body is read.",
    )
    tail_timeout_s: float = Field(
        default=5.0, gt=0, description="Deadline for one tail request; after it, fall back."
    )
    connect_timeout_s: float = Field(default=1.0, gt=0, description="TCP connect timeout.")
    tail_retries: int = Field(
        default=1,
        ge=0,
        le=3,
        description="Times a tail answer 500 or 502 is sent again (inference is idempotent): "
        "a Ray tail's proxy answers 500 for the requests of a replica that died mid-request, "
        "and the next try reaches a live one. 503 and timeouts are not retried.",
    )
    max_connections: int = Field(default=16, gt=0, description="Pooled connections to the tail.")
    quantisation: SplitQuantisation | Literal["bundle"] = Field(
        default="bundle",
        description="How the bottleneck is sent: 'bundle' (the default) as the bundle was "
        "made to be sent, entropy-coded where it carries coding tables (an entropy-coded "
        "student, a ladder of rates), else the quantisation its manifest names (the default "
        "bundle: uint4), else uint8; or fp32, fp16, uint8, uint4, entropy.",
    )
    compression: Compression = Field(
        default="zstd",
        description="zstd-compress envelopes: ~30 % smaller for post-ReLU bottlenecks, "
        "microseconds of CPU; 'none' for incompressible ones.",
    )
    zstd_level: int = Field(default=3, ge=1, le=22, description="zstd level when compressing.")
    top_k: int = Field(default=5, ge=1, le=100, description="Default length of top_k answers.")
    prior_rate_mbps: float = Field(
        default=10.0, gt=0, description="Assumed link rate (Mbit/s) before any transfer."
    )
    prior_tail_ms: float = Field(
        default=10.0, ge=0, description="Assumed edge compute time before any measurement."
    )
    ewma_alpha: float = Field(
        default=0.3, gt=0, le=1, description="Weight of the newest sample in the estimates."
    )
    auto_max_drop: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="Auto serves only modes whose measured top-1 on the task (the bundle's "
        "manifest, `splitdnn evaluate BUNDLE --record`) is at most this many points below the "
        "teacher's; a request's max_drop overrides it.",
    )
    tail_retry_s: float = Field(
        default=5.0, ge=0, description="After a tail failure, auto avoids remote modes this long."
    )
    offload_reencode: str = Field(
        default="bundle",
        pattern=r"^(none|bundle|(jpeg|webp):q?\d{1,3})$",
        description="Fair offload: re-encode the image at the teacher's input size before "
        "sending it. 'bundle' uses the measured choice stored beside the bundle "
        "(reencode.json; none if absent), 'none' sends the upload as it came, 'webp:95' forces.",
    )


@lru_cache
def get_settings() -> HeadSettings:
    """The process-wide settings; tests override this dependency."""
    return HeadSettings()
