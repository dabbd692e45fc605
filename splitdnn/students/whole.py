"""Whole students for local mode (method ``kd``, ``labels``, ``classes``): a base network's
ImageNet weights frozen through ``cut``, everything after it and a new classifier trained
(:mod:`splitdnn.distill.kd`). The catalogue is data: :data:`KD_STUDENTS`, looked up by name
with :func:`get_kd_student`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from splitdnn.errors import UnknownNameError


@dataclass(frozen=True)
class FrozenPrefixSpec:
    """A student on a pretrained base: ``base``'s ImageNet weights frozen through ``cut``,
    what comes after it trained (a whole local student here, a NoNN member family in
    :mod:`splitdnn.nonn.members`)."""

    name: str
    base: str
    cut: str
    notes: str = ""


@dataclass(frozen=True)
class KDStudentSpec(FrozenPrefixSpec):
    """A whole local-mode student: ``base``'s architecture and ImageNet weights, frozen through
    ``cut``; everything after ``cut`` and a new linear classifier are trained
    (``method: kd`` / ``labels``, see :mod:`splitdnn.distill.kd`)."""

    #: The input is average-pooled by this factor before ``base`` (2: the 224 px crop becomes
    #: 112 px, about a quarter of the MACs); 1: none. Part of the student (and of its export).
    downsample: int = 1


KD_STUDENTS: dict[str, KDStudentSpec] = {
    spec.name: spec
    for spec in (
        KDStudentSpec(
            "efficientnet_lite0_last1",
            "efficientnet_lite0",
            "_blocks.14",
            "fine-tunes the 320-channel block and the 1280-channel head conv",
        ),
        KDStudentSpec(
            "efficientnet_lite0_last2",
            "efficientnet_lite0",
            "_blocks.13",
            "fine-tunes the last 192-channel block onwards (default)",
        ),
        KDStudentSpec(
            "efficientnet_lite0_last3",
            "efficientnet_lite0",
            "_blocks.12",
            "fine-tunes the last two 192-channel blocks onwards",
        ),
        # Server-side fine-tuning with one budget for every mode (issue #11): everything after
        # the end of the stride-16 stage, where the Lite2 teacher is split (_blocks.10, 88 ch,
        # 17x17), is trained on the labels. For split mode the same spec with
        # ``kd.device_from`` puts the distilled student's frozen device part in front.
        KDStudentSpec(
            "efficientnet_lite2_tail",
            "efficientnet_lite2",
            "_blocks.10",
            "the teacher after its split point: offload (or, with kd.device_from, split) mode",
        ),
        KDStudentSpec(
            "efficientnet_lite0_tail",
            "efficientnet_lite0",
            "_blocks.7",
            "the local model after the same stage (80 ch, 14x14): local mode, same treatment",
        ),
        # Application-specific students (issue #14, method: classes) and their general
        # control of the same size: EfficientNet-Lite0 on a 2x2 average-pooled crop (112 px,
        # 23 % of the 224 px local model's MACs), fine-tuned after the same stage (80 ch, 7x7).
        KDStudentSpec(
            "efficientnet_lite0_112_tail",
            "efficientnet_lite0",
            "_blocks.7",
            "Lite0 at 112 px (input average-pooled 2x2), fine-tuned after _blocks.7",
            downsample=2,
        ),
    )
}


_Spec = TypeVar("_Spec")


def registered(registry: dict[str, _Spec], kind: str, name: str) -> _Spec:
    """``registry[name]``, or an error that lists the registered names."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown {kind} {name!r}; registered: {', '.join(sorted(registry))}"
        ) from None


def get_kd_student(name: str) -> KDStudentSpec:
    """The registered whole student ``name``; the error lists the registered ones."""
    return registered(KD_STUDENTS, "kd student", name)
