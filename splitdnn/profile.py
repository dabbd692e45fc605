"""How much compute and data each split point costs: MACs and parameters per module, output
size per split point, and how well real layer outputs compress (the papers' Figure 1).

MACs are counted with forward hooks on the layers that do the arithmetic (convolutions and
linear layers: one multiply-accumulate per weight use); normalisation, activations and pooling
are left out, as the papers and most counters do.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from splitdnn.split import split_model

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return int(output.numel() // output.shape[-1] * module.in_features * module.out_features)
    if isinstance(module, nn.ConvTranspose2d):
        x = inputs[0]
        k = int(np.prod(module.kernel_size))
        return int(x.numel() * module.out_channels // module.groups * k)
    k = int(np.prod(module.kernel_size))  # Conv1d/2d/3d
    return int(output.numel() * (module.in_channels // module.groups) * k)


@dataclass
class Cost:
    """MACs per sample and parameter count."""

    macs: int
    params: int


def module_costs(model: nn.Module, example: torch.Tensor) -> dict[str, Cost]:
    """MACs (per sample) and parameters of every counted layer, by dotted path."""
    costs: dict[str, Cost] = {}
    handles = []
    batch = example.shape[0]
    for name, module in model.named_modules():
        if isinstance(module, _COUNTED):

            def hook(mod, inputs, output, _name=name):
                prev = costs.get(_name, Cost(0, 0))
                macs = _layer_macs(mod, inputs, output) // batch
                params = sum(p.numel() for p in mod.parameters(recurse=False))
                costs[_name] = Cost(prev.macs + macs, params)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return costs


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total MACs for one sample of ``input_shape`` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        costs = module_costs(model, torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return sum(c.macs for c in costs.values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_OPS = (*_COUNTED, nn.BatchNorm1d, nn.BatchNorm2d)


def peak_activation_bytes(
    model: nn.Module, input_shape: tuple[int, ...], bytes_per_element: int = 4
) -> int:
    """An estimate, from shapes, of the largest set of activations alive at once during one
    forward of one sample of ``input_shape`` (C, H, W): over every layer, its input + its
    output + the inputs that enclosing residual blocks hold for their skip connection (a
    composite module whose output has its input's shape). It assumes a runtime that frees a
    tensor after its last use (ONNX Runtime plans memory so); weights are not included.
    Convolutions and batch norms count as layers even when they have children (a padding)."""
    stack: list[dict] = []
    composites: list[dict] = []
    layers: list[tuple[int, int, int, list[dict]]] = []
    handles = []

    def numel(xs: object) -> tuple[int, int]:
        tensors = [x for x in (xs if isinstance(xs, tuple) else (xs,)) if torch.is_tensor(x)]
        return sum(int(t.numel()) for t in tensors), (tensors[0].data_ptr() if tensors else 0)

    def enter(module: nn.Module, inputs: tuple) -> None:
        elements, ptr = numel(inputs)
        shape = tuple(inputs[0].shape) if inputs and torch.is_tensor(inputs[0]) else None
        entry = {"elements": elements, "ptr": ptr, "shape": shape, "residual": False}
        stack.append(entry)
        composites.append(entry)

    def leave(module: nn.Module, inputs: tuple, output: object) -> None:
        entry = stack.pop()
        entry["residual"] = torch.is_tensor(output) and tuple(output.shape) == entry["shape"]

    def layer(module: nn.Module, inputs: tuple, output: object) -> None:
        elements, ptr = numel(inputs)
        layers.append((elements, numel(output)[0], ptr, list(stack)))

    inside_layer: set[str] = set()
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_layer):
            continue
        if isinstance(module, _OPS) or not list(module.children()):
            inside_layer.add(name)
            handles.append(module.register_forward_hook(layer))
        elif not isinstance(module, nn.Sequential):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    peak = 0
    for given, made, ptr, enclosing in layers:
        held = sum(e["elements"] for e in enclosing if e["residual"] and e["ptr"] != ptr)
        peak = max(peak, given + made + held)
    return peak * bytes_per_element


def device_costs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """What one device pays to run ``model`` on one sample: MACs, parameters, the weights in
    fp32 / fp16 / int8 bytes (4, 2 and 1 byte a parameter; int8's per-channel scales left
    out) and the peak activation memory in fp32 (:func:`peak_activation_bytes`)."""
    params = count_params(model)
    return {
        "macs": count_macs(model, input_shape),
        "params": params,
        "weights_bytes_fp32": 4 * params,
        "weights_bytes_fp16": 2 * params,
        "weights_bytes_int8": params,
        "peak_activation_bytes": peak_activation_bytes(model, input_shape),
    }


def compressed_size(array: np.ndarray, level: int = 9) -> int:
    """Bytes of ``array`` after zlib (the "standard Zip" of the papers' Figure 1)."""
    return len(zlib.compress(np.ascontiguousarray(array).tobytes(), level))


@dataclass
class SplitPointRow:
    """One row of a profile: the cost of cutting after ``module``."""

    module: str
    output_shape: list[int]
    output_elements: int
    output_percent: float
    cumulative_macs: int
    cumulative_macs_percent: float
    compressed_bytes: int
    compressed_percent: float

    def to_dict(self) -> dict:
        return asdict(self)


def cumulative_macs(
    model: nn.Module, example: torch.Tensor, points: tuple[str, ...] | list[str]
) -> tuple[dict[str, int], int]:
    """MACs spent up to the end of each module in ``points``, and in the whole model.

    Counted on the original model in one forward pass (a traced head may inline layers that
    no longer fire hooks): a point's figure is every counted layer that ran before it ended.
    """
    order: list[int] = []
    reached: dict[str, int] = {}
    handles = []
    batch = example.shape[0]
    modules = dict(model.named_modules())

    def count(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        order.append(_layer_macs(mod, inputs, output) // batch)

    def mark(point: str):
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            reached.setdefault(point, sum(order))

        return hook

    for module in modules.values():
        if isinstance(module, _COUNTED):
            handles.append(module.register_forward_hook(count))
    for point in points:
        handles.append(modules[point].register_forward_hook(mark(point)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return reached, sum(order)


def profile_split_points(
    model: nn.Module, split_points: tuple[str, ...] | list[str], image: torch.Tensor
) -> list[SplitPointRow]:
    """Figure 1 as data: size, cumulative MACs and compressibility at each split point.

    ``image`` is one preprocessed real image (1, C, H, W): compressibility depends on content.
    Compression is measured on float32 outputs against the float32 input, like the papers.
    """
    model.eval()
    reached, total_macs = cumulative_macs(model, image, split_points)
    input_elements = image[0].numel()
    input_compressed = compressed_size(image[0].numpy())
    rows = [
        SplitPointRow(
            module="input",
            output_shape=list(image.shape[1:]),
            output_elements=input_elements,
            output_percent=100.0,
            cumulative_macs=0,
            cumulative_macs_percent=0.0,
            compressed_bytes=input_compressed,
            compressed_percent=100.0 * input_compressed / (input_elements * 4),
        )
    ]
    for point in split_points:
        with torch.no_grad():
            output = split_model(model, point).head(image)
        elements = output[0].numel()
        packed = compressed_size(output[0].numpy())
        rows.append(
            SplitPointRow(
                module=point,
                output_shape=list(output.shape[1:]),
                output_elements=elements,
                output_percent=100.0 * elements / input_elements,
                cumulative_macs=reached[point],
                cumulative_macs_percent=100.0 * reached[point] / total_macs,
                compressed_bytes=packed,
                compressed_percent=100.0 * packed / (input_elements * 4),
            )
        )
    return rows


def head_macs(model: nn.Module, module_path: str, input_shape: tuple[int, ...]) -> int:
    """MACs of the teacher head that ends at ``module_path``."""
    was_training = model.training
    model.eval()
    try:
        reached, _ = cumulative_macs(model, torch.zeros(1, *input_shape), [module_path])
    finally:
        model.train(was_training)
    return reached[module_path]


@dataclass
class StudentCosts:
    """What a bottleneck student costs next to the teacher head it replaces (Table 3 columns
    that need no training: data size, device MACs and their reduction, parameters)."""

    teacher: str
    split_module: str
    bottleneck_channels: int
    variant: str
    input_shape: list[int]
    bottleneck_shape: list[int]
    data_size_percent: float
    bottleneck_bytes_fp32: int
    bottleneck_bytes_uint8: int
    device_macs: int
    server_decoder_macs: int
    teacher_head_macs: int
    teacher_macs: int
    device_macs_reduction_percent: float
    device_params: int
    student_params: int
    teacher_head_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def student_costs(
    teacher: str, bottleneck: int, variant: str | None = None, split_module: str | None = None
) -> StudentCosts:
    """Sizes, MACs and parameters of the student for ``teacher`` at ``split_module`` (default:
    the teacher's ``student_split``; ``variant`` default: the teacher's default variant), on
    random weights: none of these figures depends on them. Teacher head parameters are those
    of the modules the cut head uses."""
    from splitdnn.models import get_teacher
    from splitdnn.students import build_student, default_variant

    spec = get_teacher(teacher)
    split = split_module or spec.student_split
    model = spec.build(False)
    # teacher_init copies layers of this random-weight teacher: nothing is downloaded.
    student = build_student(teacher, bottleneck, variant, split, teacher_model=model).eval()
    shape = spec.input_shape
    with torch.no_grad():
        z = student.encode(torch.zeros(1, *shape))
    reached, total = cumulative_macs(model, torch.zeros(1, *shape), [split])
    head = reached[split]
    device = count_macs(student.encoder, shape)
    elements = int(z[0].numel())
    return StudentCosts(
        teacher=teacher,
        split_module=split,
        bottleneck_channels=bottleneck,
        variant=variant or default_variant(teacher),
        input_shape=list(shape),
        bottleneck_shape=list(z.shape[1:]),
        data_size_percent=100.0 * elements / int(np.prod(shape)),
        bottleneck_bytes_fp32=4 * elements,
        bottleneck_bytes_uint8=elements,
        device_macs=device,
        server_decoder_macs=count_macs(student.decoder, tuple(z.shape[1:])),
        teacher_head_macs=head,
        teacher_macs=total,
        device_macs_reduction_percent=100.0 * (1.0 - device / head),
        device_params=count_params(student.encoder),
        student_params=count_params(student),
        teacher_head_params=count_params(split_model(model, split).head),
    )
