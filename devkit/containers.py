"""Build and run the real Dockerfiles without a Docker engine: buildah builds, podman runs.

The slim Python base image cannot be pulled here, so a stand-in with the same name is made once per
machine from Debian's packages (debootstrap) and cached in podman's image store.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("podman", "buildah", "runc", "debootstrap")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# What `make images` gets here: no pull, the host's network and CAs, chroot isolation.
BUILD_FLAGS = f"--pull=never --network host --isolation chroot -v {CA_BUNDLE}:{CA_BUNDLE}:ro"
IMAGE_PREFIX, TAG = "localhost/polyglot", "test"
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")


def require_tools() -> None:
    """Fail, never skip, when the machine cannot build or run images; say what is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        raise RuntimeError(f"the container tests need root and {', '.join(TOOLS)}; missing: "
                           f"{', '.join(missing) or 'root'} (Debian: `make system-deps`)")


def base_image() -> str:
    """The one ``FROM`` image of the recipes, with the registry podman names it by."""
    bases = {m for f in ROOT.glob("polyglot-python-*/Dockerfile")
             for m in re.findall(r"^FROM (\S+)", f.read_text(), re.M)}
    if len(bases) != 1:
        raise RuntimeError(f"the recipes do not share one base image: {sorted(bases)}")
    return f"docker.io/library/{bases.pop()}"


def ensure_base_image(environ: Mapping[str, str]) -> str:
    """Import the Debian stand-in for the base image unless podman has it already."""
    image = base_image()
    if subprocess.run([*PODMAN, "image", "exists", image], env=environ, check=False).returncode == 0:
        return image
    with tempfile.TemporaryDirectory(prefix="polyglot-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=python3,python3-dev,python3-venv,python3-pip,ca-certificates", "bookworm",
                        str(rootfs)], check=True, capture_output=True, timeout=900)
        for link, target in (("python", "python3"), ("pip", "pip3")):
            if not (rootfs / "usr/bin" / link).exists():
                (rootfs / "usr/bin" / link).symlink_to(target)
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*PODMAN, "import", "-", image], stdin=tar.stdout, env=environ, check=True,
                       capture_output=True, timeout=600)
        tar.wait(60)
    return image


def podman_environ(workdir: Path) -> dict[str, str]:
    """The environment podman runs with: a containers.conf without default ulimits."""
    conf = workdir / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def build_images(environ: Mapping[str, str]) -> dict[str, str]:
    """``make images`` with buildah, exactly as the README documents it; image name by recipe folder."""
    subprocess.run(["make", "--no-print-directory", "images", "CONTAINER_ENGINE=buildah", f"BUILD_FLAGS={BUILD_FLAGS}",
                    f"IMAGE_PREFIX={IMAGE_PREFIX}", f"TAG={TAG}"], cwd=ROOT, env=environ, check=True,
                   capture_output=True, timeout=1200)
    return {folder.name: f"{IMAGE_PREFIX}/{folder.name}:{TAG}" for folder in ROOT.glob("polyglot-python-*")
            if (folder / "Dockerfile").exists()}


def run_args(image: str, args: Sequence[str], name: str, env: Mapping[str, str] | None = None,
             entrypoint: str | None = None, volumes: Mapping[str, str] | None = None) -> list[str]:
    """``podman run`` on the host network, as a Kubernetes deployer passes arguments (exec style).

    ``volumes`` maps host directories to where they are mounted (read-only), as a pod's volume mounts.
    """
    command = [*PODMAN, "run", "--rm", "--network", "host", "--name", name]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    for host, mounted in (volumes or {}).items():
        command += ["-v", f"{host}:{mounted}:ro"]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    return [*command, image, *args]


def inspect(target: str, template: str, environ: Mapping[str, str], kind: str = "image") -> str:
    return subprocess.run([*PODMAN, kind, "inspect", "--format", template, target], env=environ, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()
