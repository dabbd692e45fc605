"""Students, by kind; ``from splitdnn.students import X`` reaches every public name.

* :mod:`~splitdnn.students.bottleneck` — head network distillation: a device ``encoder``
  ending at the bottleneck and a server ``decoder`` restoring the teacher head's output
  (:class:`BottleneckStudent`, :class:`MimicModel`). Four designs behind one entry point,
  :func:`build_student`: the papers' (:func:`paper_student`), the EfficientNet-Lite one
  (:func:`lite_student`), the one that starts from the teacher's own layers
  (:func:`teacher_init_student`, variant ``teacher_init``, the default where it exists) and one
  for any split point (:func:`scaled_student`); variants ``narrow`` and ``wide`` (first named
  ``caltech101`` and ``imagenet``, still accepted: :func:`canonical_variant`). The
  entropy-coded bottleneck (:class:`EntropyStudent`, :func:`entropy_student`) and
  :func:`widen_state` (a student's weights for one with a wider bottleneck) are here too.
* :mod:`~splitdnn.students.whole` — whole students for local mode (``method: kd``,
  ``labels``, ``classes``): the catalogue :data:`KD_STUDENTS` and :func:`get_kd_student`.

NoNN's members (slices of a pretrained network, one per device) live with the rest of NoNN in
:mod:`splitdnn.nonn.members`.
"""

from __future__ import annotations

from splitdnn.students.bottleneck import (
    DEFAULT_VARIANT,
    FALLBACK_VARIANT,
    LITE_DESIGNS,
    PAPER_DESIGNS,
    TEACHER_INIT_DESIGNS,
    VARIANT_ALIASES,
    VARIANTS,
    BottleneckStudent,
    ChannelScale,
    EntropyStudent,
    LiteDesign,
    MimicModel,
    PaperDesign,
    TeacherInitDesign,
    build_student,
    canonical_variant,
    default_variant,
    depthwise_separable,
    entropy_student,
    lite_student,
    paper_student,
    scaled_student,
    split_output_shape,
    student_problem,
    student_split,
    student_variants,
    teacher_init_design,
    teacher_init_student,
    widen_state,
)
from splitdnn.students.whole import (
    KD_STUDENTS,
    FrozenPrefixSpec,
    KDStudentSpec,
    get_kd_student,
    registered,
)

__all__ = [
    "DEFAULT_VARIANT",
    "FALLBACK_VARIANT",
    "KD_STUDENTS",
    "LITE_DESIGNS",
    "PAPER_DESIGNS",
    "TEACHER_INIT_DESIGNS",
    "VARIANTS",
    "VARIANT_ALIASES",
    "BottleneckStudent",
    "ChannelScale",
    "EntropyStudent",
    "FrozenPrefixSpec",
    "KDStudentSpec",
    "LiteDesign",
    "MimicModel",
    "PaperDesign",
    "TeacherInitDesign",
    "build_student",
    "canonical_variant",
    "default_variant",
    "depthwise_separable",
    "entropy_student",
    "get_kd_student",
    "lite_student",
    "paper_student",
    "registered",
    "scaled_student",
    "split_output_shape",
    "student_problem",
    "student_split",
    "student_variants",
    "teacher_init_design",
    "teacher_init_student",
    "widen_state",
]
