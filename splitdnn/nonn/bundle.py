"""NoNN bundles: one ONNX file per member and the join layer, pinned by ``nonn.json``.

::

    nonn.json        the :class:`NoNNManifest` below
    member0.onnx     "image" [N,3,S,S] -> "features" [N,C_0]   (member service 0)
    member1.onnx     ...                                        (member service 1)
    join.npz         weight [classes, sum C_k], bias [classes], means [sum C_k]

The join layer is one small matrix (1,280 × 101 for K = 2), run with numpy wherever the
member answers meet (the gateway), so the gateway needs no ONNX runtime. ``means`` are the
members' average features on the training images: a degraded answer, when a member is down,
puts them in its place (the join's best guess without that member, not zeros).

Hashing, the bundle id, verification and the atomic write are :mod:`splitdnn.bundle`'s
(:func:`~splitdnn.bundle.file_entry`, :func:`~splitdnn.bundle.verify_files`,
:func:`~splitdnn.bundle.write_manifest_file`); members put the id in every envelope and the
gateway refuses features from another bundle. numpy and pydantic only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from splitdnn.bundle import (
    FileEntry,
    LoadedBundle,
    PreprocessingSpec,
    file_entry,
    pinned_manifest,
    verify_files,
    write_manifest_file,
)
from splitdnn.errors import BundleError
from splitdnn.imaging import Preprocessing

NONN_MANIFEST = "nonn.json"
JOIN_FILE = "join.npz"
FORMAT_VERSION = 1


class MemberSpec(BaseModel):
    file: str
    channels: int = Field(gt=0)


class NoNNManifest(BaseModel):
    """``nonn.json``; field names are a contract between the exporter, members and gateway."""

    format_version: int = FORMAT_VERSION
    kind: str = "nonn"
    bundle_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    name: str
    teacher: str
    student: str
    preprocessing: PreprocessingSpec
    members: list[MemberSpec] = Field(min_length=1)
    join: str = JOIN_FILE
    labels: list[str] = Field(min_length=1)
    task: str = "caltech101"
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> NoNNManifest:
        if self.format_version != FORMAT_VERSION or self.kind != "nonn":
            raise ValueError(f"not a NoNN bundle of format {FORMAT_VERSION}")
        for name in [m.file for m in self.members] + [self.join]:
            if name not in self.files:
                raise ValueError(f"{name} is not listed in files")
        return self


@dataclass(frozen=True)
class Join:
    """The join layer: logits = concat(features) @ weight.T + bias."""

    weight: np.ndarray
    bias: np.ndarray
    means: np.ndarray
    channels: tuple[int, ...]

    def slices(self) -> list[slice]:
        bounds = np.cumsum((0, *self.channels))
        return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def __call__(self, features: list[np.ndarray | None]) -> np.ndarray:
        """Logits (N, classes) from each member's (N, C_k) features; ``None`` for a member
        that did not answer is replaced by its training mean."""
        if len(features) != len(self.channels):
            raise ValueError(f"{len(features)} feature sets for {len(self.channels)} members")
        n = next((len(f) for f in features if f is not None), 1)
        parts = []
        for f, part, c in zip(features, self.slices(), self.channels, strict=True):
            if f is None:
                parts.append(np.broadcast_to(self.means[part], (n, c)))
            else:
                if f.shape != (n, c):
                    raise ValueError(f"member features of shape {f.shape}, expected {(n, c)}")
                parts.append(np.asarray(f, np.float32))
        x = np.concatenate(parts, axis=1)
        return x @ self.weight.T + self.bias


@dataclass(frozen=True)
class NoNNBundle(LoadedBundle):
    """A loaded, verified NoNN bundle: its members' files and the join."""

    manifest: NoNNManifest

    def member_path(self, index: int) -> Path:
        if not 0 <= index < len(self.manifest.members):
            raise BundleError(
                f"member {index}: this bundle has {len(self.manifest.members)} members"
            )
        return self.path / self.manifest.members[index].file

    def join(self) -> Join:
        with np.load(self.path / self.manifest.join, allow_pickle=False) as data:
            weight, bias, means = (
                np.asarray(data[k], np.float32) for k in ("weight", "bias", "means")
            )
        channels = tuple(m.channels for m in self.manifest.members)
        if weight.shape != (len(self.manifest.labels), sum(channels)) or bias.shape != (
            len(self.manifest.labels),
        ):
            raise BundleError(f"{self.manifest.join}: join of shape {weight.shape} does not fit")
        return Join(weight, bias, means, channels)


def save_join(path: Path, weight: np.ndarray, bias: np.ndarray, means: np.ndarray) -> None:
    np.savez(
        path,
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        means=means.astype(np.float32),
    )


def write_nonn_manifest(
    directory: Path,
    *,
    name: str,
    teacher: str,
    student: str,
    preprocessing: Preprocessing,
    members: list[tuple[str, int]],
    labels: list[str],
    task: str = "caltech101",
    metrics: dict[str, Any] | None = None,
) -> NoNNManifest:
    """Hash the member files and ``join.npz`` in ``directory`` and write ``nonn.json``."""
    names = [f for f, _ in members] + [JOIN_FILE]
    files = {name: file_entry(directory / name, "file", NONN_MANIFEST) for name in names}
    manifest = pinned_manifest(
        NoNNManifest,
        directory,
        files,
        name=name,
        student=student,
        teacher=teacher,
        preprocessing=PreprocessingSpec.model_validate(preprocessing.to_dict()),
        members=[MemberSpec(file=f, channels=c) for f, c in members],
        labels=labels,
        task=task,
        metrics=metrics or {},
    )
    write_manifest_file(directory, NONN_MANIFEST, manifest)
    return manifest


def load_nonn_bundle(directory: str | Path, *, verify: bool = True) -> NoNNBundle:
    """Read ``nonn.json`` and check every listed file's size and sha256 (``verify``)."""
    directory = Path(directory)
    path = directory / NONN_MANIFEST
    if not path.is_file():
        raise BundleError(f"no NoNN bundle at {directory}: {NONN_MANIFEST} is missing")
    try:
        manifest = NoNNManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid NoNN manifest: {exc}") from exc
    verify_files(path, manifest.files, manifest.bundle_id, verify=verify)
    return NoNNBundle(directory, manifest)
