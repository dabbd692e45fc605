"""Turn a root filesystem tar into an image tarball for ``docker load``, for any platform.

``docker import`` records the daemon's own architecture on older engines (20.10 ignores
``--platform``), so an arm64 root filesystem imported on an amd64 machine claims to be
amd64 and builds for linux/arm64 cannot find it. This writes the image the way ``docker
save`` does (one layer, a config that names the architecture, manifest.json), which every
engine loads as it is:

    tar -C rootfs -c . | python3 scripts/rootfs-image.py --tag splitdnn-base:bookworm-arm64 \\
        --arch arm64 --env LANG=C.UTF-8 --cmd python3 | docker load
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

#: Debian architecture names -> OCI (architecture, variant).
ARCHES = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
    "i386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
}


def image_config(
    arch: str, diff_id: str, env: list[str], cmd: list[str], comment: str, created: str
) -> dict:
    architecture, variant = ARCHES[arch]
    config: dict = {
        "architecture": architecture,
        "os": "linux",
        "created": created,
        "config": {"Env": env, "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": comment}],
    }
    if variant:
        config["variant"] = variant
    return config


def write_image(
    rootfs_tar: BinaryIO,
    out: BinaryIO,
    tag: str,
    arch: str,
    env: list[str],
    cmd: list[str],
    comment: str = "rootfs-image.py",
) -> dict:
    """Copy ``rootfs_tar`` into a ``docker load`` tarball on ``out``; returns the config."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        layer = Path(tmp) / "layer.tar"
        digest = hashlib.sha256()
        with layer.open("wb") as handle:
            for block in iter(lambda: rootfs_tar.read(1 << 20), b""):
                digest.update(block)
                handle.write(block)
        config = image_config(arch, f"sha256:{digest.hexdigest()}", env, cmd, comment, created)
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
        with tarfile.open(fileobj=out, mode="w|") as image:
            image.add(layer, arcname="layer/layer.tar")
            for name, data in (
                (config_name, config_bytes),
                ("manifest.json", json.dumps(manifest).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                image.addfile(info, io.BytesIO(data))
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="repository:tag of the image")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHES), help="Debian arch")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE, repeatable")
    parser.add_argument("--cmd", nargs="+", default=["/bin/sh"], help="default command")
    parser.add_argument("--comment", default="rootfs-image.py", help="history entry")
    args = parser.parse_args(argv)
    if sys.stdout.isatty():
        parser.error("pipe the output into `docker load`")
    write_image(sys.stdin.buffer, sys.stdout.buffer, args.tag, args.arch, args.env, args.cmd,
                args.comment)  # fmt: skip
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
