"""torchvision teachers of the papers (DenseNet-169/201, ResNet-152, Inception-v3) and
MobileNetV2, the papers' on-device baseline.

Their weights download from the internet when the user asks for them (``pretrained=True``);
offline, build them with random weights (``pretrained=False``) to profile, split and test.
"""

from __future__ import annotations

from torch import nn

from splitdnn.imaging import Preprocessing
from splitdnn.models._api import TeacherSpec, register


def _builder(name: str):
    def build(pretrained: bool = False) -> nn.Module:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        kwargs = {"init_weights": False} if name == "inception_v3" and not pretrained else {}
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
