"""torchvision teachers of the papers (DenseNet-169/201, ResNet-152, Inception-v3) and
MobileNetV2, the papers' on-device baseline; and any other torchvision classification model by
name (:func:`derive_spec`).

Their weights download from the internet when the user asks for them (``pretrained=True``);
offline, build them with random weights (``pretrained=False``) to profile, split and test, or
bring a state dict (``teacher.weights``, :mod:`splitdnn.models.weights`).
"""

from __future__ import annotations

import torch
from torch import nn

from splitdnn.errors import UnknownNameError
from splitdnn.imaging import Preprocessing
from splitdnn.models._api import TeacherSpec, add_resolver, register
from splitdnn.split import output_shapes, valid_cuts

#: Models whose random initialisation is slow (scipy truncated normals) and unneeded offline.
_INIT_WEIGHTS = {"inception_v3", "googlenet"}


def _builder(name: str):
    def build(pretrained: bool = False) -> nn.Module:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        kwargs = {"init_weights": False} if name in _INIT_WEIGHTS and not pretrained else {}
        return torchvision.models.get_model(name, weights=weights, **kwargs).eval()

    return build


def weights_cached(name: str) -> bool:
    """Whether torchvision's default weights for ``name`` are already in the torch hub cache
    (so ``pretrained=True`` needs no download)."""
    from pathlib import Path

    import torch
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError):
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()


def _densenet_points(blocks: int = 4) -> tuple[str, ...]:
    points = ["features.pool0"]
    for i in range(1, blocks + 1):
        points.append(f"features.denseblock{i}")
        if i < blocks:
            points.append(f"features.transition{i}")
    return (*points, "features.norm5")


for _name in ("densenet169", "densenet201"):  # same stem and first two blocks
    register(
        TeacherSpec(
            name=_name,
            family="densenet",
            build=_builder(_name),
            input_size=224,
            preprocessing=Preprocessing.torchvision(224),
            split_points=_densenet_points(),
            student_split="features.transition2",
            classifier="classifier",
        )
    )
register(
    TeacherSpec(
        name="resnet152",
        family="resnet",
        build=_builder("resnet152"),
        input_size=224,
        preprocessing=Preprocessing.torchvision(224),
        split_points=("maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"),
        student_split="layer2",
        classifier="fc",
    )
)
register(
    TeacherSpec(
        name="inception_v3",
        family="inception",
        build=_builder("inception_v3"),
        input_size=299,
        preprocessing=Preprocessing.torchvision(299, resize=342),
        split_points=(
            "Conv2d_2b_3x3",
            "maxpool1",
            "Conv2d_4a_3x3",
            "maxpool2",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7c",
            "avgpool",
        ),
        student_split="maxpool2",
        classifier="fc",
    )
)
register(
    TeacherSpec(
        name="mobilenet_v2",
        family="mobilenet",
        build=_builder("mobilenet_v2"),
        input_size=224,
        preprocessing=Preprocessing.torchvision(224),
        split_points=tuple(f"features.{i}" for i in range(19)),
        student_split="features.6",
        classifier="classifier.1",
    )
)


# --- any other torchvision classifier, derived from the model itself ---------------------------

#: Layers that are never a useful cut on their own (between a conv and its batch norm, say).
_NOT_A_POINT = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Dropout,
    nn.Identity,
    nn.Linear,
    nn.Flatten,
)


def _preprocessing(name: str) -> Preprocessing:
    """Crop, resize, interpolation and mean/std of the model's torchvision weights (data on
    the weights enum: nothing is downloaded)."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return Preprocessing.torchvision(224)
    size = int(transforms.crop_size[0])
    mode = str(transforms.interpolation.value)
    return Preprocessing(
        size=size,
        resize=int(transforms.resize_size[0]),
        interpolation=mode if mode in ("bilinear", "bicubic") else "bilinear",
        mean=tuple(255 * m for m in transforms.mean),  # type: ignore[arg-type]
        std=tuple(255 * s for s in transforms.std),  # type: ignore[arg-type]
    )


def derive_spec(name: str) -> TeacherSpec | None:
    """A :class:`TeacherSpec` for an unregistered torchvision classification model, or None
    when torchvision has no such classifier.

    Split points: the modules one or two levels deep (not single convs, norms, activations)
    where one 4-D map crosses a valid cut, in forward order, one name per cut. Classifier: the
    last linear layer. The student split: the last point whose grid is at least 1/8 of the
    input's (the papers cut at stride 8-16). Preprocessing: that of the model's weights.
    """
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    build = _builder(name)
    with torch.device("meta"):
        model = build(False)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnknownNameError(
            f"torchvision model {name!r} cannot be a teacher: it has no final linear layer"
        )
    classifier, final = linears[-1]
    preprocessing = _preprocessing(name)
    candidates = [
        n
        for n, m in model.named_modules()
        if n
        and n.count(".") <= 1
        and not isinstance(m, _NOT_A_POINT)
        and not n.startswith(classifier.split(".")[0] + ".")
    ]
    cuts = valid_cuts(model, candidates, distinct=True)
    shapes = output_shapes(model, cuts, (3, preprocessing.size, preprocessing.size))
    points = tuple(n for n in cuts if n in shapes)
    if not points:
        raise UnknownNameError(
            f"torchvision model {name!r} cannot be a teacher: no module one or two levels "
            "deep is a cut where one feature map (N, C, H, W) crosses, and splitdnn's students "
            "are convolutional (a vision transformer passes tokens)"
        )
    early = [p for p in points if shapes[p][1] * 8 >= preprocessing.size]
    return TeacherSpec(
        name=name,
        family="torchvision",
        build=build,
        input_size=preprocessing.size,
        preprocessing=preprocessing,
        split_points=points,
        student_split=early[-1] if early else points[0],
        classifier=classifier,
        num_classes=final.out_features,
        notes="derived from torchvision.models (split points from the model's graph)",
    )


add_resolver(derive_spec)
