"""Tail (edge) settings: ``SPLITDNN_TAIL_*`` environment variables, plus the shared ones."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class TailSettings(ServiceSettings):
    """Environment: ``SPLITDNN_BUNDLE``, ``SPLITDNN_TOKEN``, ``SPLITDNN_TAIL_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITDNN_TAIL_", populate_by_name=True, extra="ignore"
    )

    max_in_flight: int = Field(
        default=8, gt=0, description="Requests processed at once; more get 503 + Retry-After."
    )
    max_batch: int = Field(
        default=16,
        gt=0,
        le=1024,
        description="Most samples in one envelope or OIP request (413 above); with the "
        "bottleneck shape it also bounds the raw size, so a small body cannot declare a big "
        "tensor.",
    )
    max_envelope_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest envelope accepted (413 above)."
    )
    max_raw_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Largest decompressed tensor (400 above)."
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Default length of top_k answers.")


@lru_cache
def get_settings() -> TailSettings:
    """The process-wide settings; tests override this dependency."""
    return TailSettings()
