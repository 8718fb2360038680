"""pytest fixtures of the container and QEMU tests (imported by their test modules).

Where this machine cannot run them the tests skip with the reason; in CI (CI=true) they fail instead,
so they are never skipped silently where they must run.
"""
from __future__ import annotations

import os
import shutil

import pytest

from containers.image import ensure_image
from containers.lab import make_package_hosts
from containers.nspawn import container_support


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI runs the container tests, but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def container_host():
    reason = container_support()
    if reason:
        _unavailable(reason)


@pytest.fixture(scope="session")
def qemu_host(container_host):
    if not shutil.which("qemu-system-x86_64"):
        _unavailable("the QEMU disk test needs qemu-system-x86_64 (apt-get install qemu-system-x86)")


@pytest.fixture(scope="session")
def trixie_image(container_host):
    return ensure_image()


@pytest.fixture(scope="session")
def package_hosts(trixie_image, tmp_path_factory):
    return make_package_hosts(tmp_path_factory.mktemp("package-hosts"), trixie_image)
