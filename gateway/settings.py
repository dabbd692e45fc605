"""Gateway settings: ``SPLITDNN_GATEWAY_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import BaseServiceSettings, shared
from splitdnn.serve import DEFAULT_URLS

Mode = Literal["split", "local", "offload", "auto", "nonn"]


class GatewaySettings(BaseServiceSettings):
    """Environment: ``SPLITDNN_GATEWAY_<FIELD>``. The gateway loads no model."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITDNN_GATEWAY_", populate_by_name=True, extra="ignore"
    )

    head_url: str | None = Field(
        default=None,
        description="Base URL of the head; unset: the default head's, except with a NoNN "
        "bundle, where it means no head: the gateway serves mode=nonn only.",
    )
    tail_url: str = Field(
        default=DEFAULT_URLS["tail"], description="Base URL of the tail (status page only)."
    )
    timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline for the head's answer (504 after it)."
    )
    default_mode: Mode = Field(default="split", description="Mode when the request names none.")
    max_in_flight: int = Field(
        default=8,
        gt=0,
        description="Requests forwarded at once; more get 503 + Retry-After at once, before "
        "their body is read (so at most this many bodies are buffered).",
    )
    # -- mode=nonn (gateway/nonn.py) --
    nonn_bundle: Path | None = shared(  # the members load the same one
        "NONN_BUNDLE", "NoNN bundle (its join layer runs here); unset: mode=nonn answers 422."
    )
    member_urls: list[str] = Field(
        default_factory=list,
        description="NoNN member base URLs in member order (JSON list: '[\"http://m0:8010\"]').",
    )
    member_timeout_s: float = Field(
        default=5.0, gt=0, description="Deadline of each member call (mode=nonn)."
    )
    nonn_degraded: bool = Field(
        default=True,
        description="A member down or late: answer from the others with its training-mean "
        "features (degraded: true), or 503 when false.",
    )
    token: SecretStr | None = shared(  # the head checks the same token
        "TOKEN", "Bearer token the gateway sends the head; unset sends none."
    )

    @model_validator(mode="after")
    def _a_head_unless_nonn_only(self) -> GatewaySettings:
        if self.head_url is None and self.nonn_bundle is None:
            self.head_url = DEFAULT_URLS["head"]
        return self


@lru_cache
def get_settings() -> GatewaySettings:
    """The process-wide settings; tests override this dependency."""
    return GatewaySettings()
