"""A toy ladder bundle: toy bundles (random weights) with coding tables, one per rate, put
together by :func:`splitdnn.bundle.write_ladder` as the exporter's ladder is.

Rates ``r1`` and ``r2`` come from the same toy weights (their device and server parts are
identical files, stored once) and differ in their tables: ``r1`` codes with a peaked model
(fewer bytes), ``r2`` with a flat one. ``r3`` has other weights and the flat tables.
"""

from __future__ import annotations

import json
from pathlib import Path

from toy_bundle import BOTTLENECK, build_toy_bundle

from splitdnn.bundle import Manifest, bundle_id_of, sha256_file, write_ladder

#: CDFs over the symbols -2..2 (16-bit): most mass on 0, or spread evenly.
PEAKED = [0, 512, 1024, 64512, 65024, 65536]
FLAT = [0, 13107, 26214, 39321, 52428, 65536]
#: rate -> (toy weights seed, CDF)
RATES = {"r1": (0, PEAKED), "r2": (0, FLAT), "r3": (1, FLAT)}


def add_coding_tables(directory: Path, cdf: list[int]) -> None:
    """Give a one-rate toy bundle coding tables (``coding.json``, hashed in its manifest)."""
    channels = BOTTLENECK[0]
    tables = {"medians": [0.0] * channels, "offsets": [-2] * channels, "cdfs": [cdf] * channels}
    path = directory / "coding.json"
    path.write_text(json.dumps({"precision": 16, **tables}))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["coding.json"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["coding"] = "coding.json"
    manifest["bundle_id"] = bundle_id_of({n: e["sha256"] for n, e in manifest["files"].items()})
    (directory / "manifest.json").write_text(json.dumps(manifest))


def build_toy_ladder(directory: Path, default: str = "r2") -> Manifest:
    """Write the toy ladder (rates r1, r2, r3; ``default`` the default rate) into
    ``directory``, a new folder; its sources go beside it."""
    sources = {}
    for rate, (seed, cdf) in RATES.items():
        source = directory.parent / f"{directory.name}-source-{rate}"
        build_toy_bundle(source, seed=seed)
        add_coding_tables(source, cdf)
        sources[rate] = source
    return write_ladder(directory, sources, default)
