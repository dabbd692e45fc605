"""Device profiles: data with a cited source, turned into a cgroup quota."""

from __future__ import annotations

import pytest

from splitdnn import devices
from splitdnn.errors import UnknownNameError


def test_profiles_include_a_pi_class_a_jetson_class_and_no_limit() -> None:
    names = set(devices.profiles())
    assert {"pi4", "jetson-nano", "unlimited"} <= names


def test_every_limited_profile_cites_its_source_and_has_a_short_period() -> None:
    for profile in devices.profiles().values():
        assert profile.source
        assert profile.period_us <= 20_000  # 100 ms periods make times cluster at 100 ms
        if profile.cpu_share is not None:
            assert 0 < profile.cpu_share <= 1
            assert profile.quota_us == round(profile.cpu_share * profile.period_us)
            assert profile.docker_args() == [
                f"--cpu-period={profile.period_us}",
                f"--cpu-quota={profile.quota_us}",
            ]


def test_a_weaker_device_gets_a_smaller_share() -> None:
    assert devices.get("pi4").cpu_share < devices.get("jetson-nano").cpu_share
    assert devices.get("unlimited").quota_us is None
    assert devices.get("unlimited").docker_args() == []


def test_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="pi4"):
        devices.get("pi5")


def test_a_period_too_short_for_the_share_names_the_shortest_one() -> None:
    """0.11 core of a 1 ms period is a 110 µs quota, which the kernel refuses (EINVAL)."""
    import dataclasses

    pi4 = devices.get("pi4")
    with pytest.raises(ValueError, match=r"below the kernel's 1000 µs minimum.* 9091 µs"):
        dataclasses.replace(pi4, period_us=1000)
    assert dataclasses.replace(pi4, period_us=9091).quota_us == 1000
    assert dataclasses.replace(devices.get("unlimited"), period_us=1000).quota_us is None
