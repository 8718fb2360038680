"""components/scripts/outer-template.sh (a local step) against fakepve on 127.0.0.1: the sealed builder
becomes a template through the outer API once it has powered off (qemu-server refuses a running VM)."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from ops_fixtures import TOKEN, ca, ops_servers, outer_fake, serve  # noqa: F401
from pvelab.node_template import local_script_command

VMID = 9199


@pytest.fixture
def outer(serve):
    fake = serve(outer_fake())
    fake.add_vm(VMID, "pvelab-builder-abc123", node="pve", status="stopped", config={"cores": 4, "memory": 8192})
    return fake


def convert(fake, ca_file: str, token: str = TOKEN, deadline: str = "5") -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PVE_ENDPOINT": fake.url + "/", "PVE_NODE": "pve",
           "VMID": str(VMID), "PVE_API_TOKEN": token, "PVE_CA_FILE": ca_file, "DEADLINE_S": deadline,
           "POLL_S": "0.05"}
    return subprocess.run(["bash", "-c", local_script_command("outer-template")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_stopped_builder_becomes_a_template(outer, ca):
    r = convert(outer, ca)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{VMID}\n"
    assert outer.vm(VMID).template is True
    assert "is now the golden node template" in r.stderr


def test_twice_changes_nothing(outer, ca):
    assert convert(outer, ca).returncode == 0
    r = convert(outer, ca)
    assert r.returncode == 0, r.stderr
    assert "already a template" in r.stderr


def test_waits_for_the_builder_to_power_off(outer, ca):
    vm = outer.vm(VMID)
    vm.status = "running"

    def power_off():
        time.sleep(0.5)
        vm.status = "stopped"

    threading.Thread(target=power_off, daemon=True).start()
    r = convert(outer, ca)
    assert r.returncode == 0, r.stderr
    assert vm.template is True


def test_a_builder_that_never_powers_off_fails_clearly(outer, ca):
    outer.vm(VMID).status = "running"
    r = convert(outer, ca, deadline="1")
    assert r.returncode == 1
    assert f"the builder VM {VMID} is still 'running' 1s after sealing: it did not power off" in r.stderr
    assert outer.vm(VMID).template is False


def test_a_wrong_token_fails_and_never_shows_the_secret(outer, ca):
    wrong = TOKEN.rsplit("=", 1)[0] + "=ffffffff-0000-4000-8000-000000000000"
    r = convert(outer, ca, token=wrong)
    assert r.returncode == 1
    assert f"cannot read VM {VMID} on pve" in r.stderr
    assert "ffffffff" not in r.stderr + r.stdout
