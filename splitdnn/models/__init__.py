"""The teacher catalogue: ``get_teacher(name)`` -> :class:`TeacherSpec`.

Import this package to register every teacher; one file per family.
"""

from splitdnn.models import efficientnet_lite, torchvision_models  # noqa: F401  (registers)
from splitdnn.models._api import TeacherSpec, get_teacher, list_teachers, register
from splitdnn.models.weights import TeacherWeightsError, build_teacher, load_weights

__all__ = [
    "TeacherSpec",
    "TeacherWeightsError",
    "build_teacher",
    "get_teacher",
    "list_teachers",
    "load_weights",
    "register",
]
