"""Member settings: ``SPLITDNN_MEMBER_*`` environment variables, plus the shared ones."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings
from splitdnn.wire import Quantisation


class MemberSettings(ServiceSettings):
    """Environment: ``SPLITDNN_NONN_BUNDLE``, ``SPLITDNN_TOKEN``, ``SPLITDNN_MEMBER_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="SPLITDNN_MEMBER_", populate_by_name=True, extra="ignore"
    )

    nonn_bundle: Path = Field(
        default=Path("bundles/nonn"),
        validation_alias="SPLITDNN_NONN_BUNDLE",  # no prefix: members and gateway share it
        description="NoNN bundle directory (nonn.json, member ONNX files, join.npz).",
    )
    index: int = Field(default=0, ge=0, description="Which member of the bundle this runs.")
    quantisation: Quantisation = Field(
        default="uint8", description="Default envelope quantisation of the features."
    )
    max_in_flight: int = Field(
        default=4, gt=0, description="Requests processed at once; more get 503 + Retry-After."
    )


@lru_cache
def get_settings() -> MemberSettings:
    """The process-wide settings; tests override this dependency."""
    return MemberSettings()
