"""The golden node template's pure logic: its key, the builder's name and address, validation.

Pure Python (no Pulumi import): the component (components/node_template.py), `plan`, the benchmark and the
tests share it. The key names what is baked into the template (PVE version and repository, Ceph release
and repository, the base image, and the text of every script that runs on the builder), so any change to
one of them builds a new template instead of reusing a stale one.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
from typing import TYPE_CHECKING, Mapping, Optional

from .node_script import HEREDOC_MARK, LIBRARY, libraries_of, library_text, script_text

if TYPE_CHECKING:
    from .spec import LabSpec

# Every script whose text ends up in the template (and the seal marker's reader).
BAKED_SCRIPTS = ("install-pve", "ceph-install", "node-seal", "node-firstboot")
KEY_LENGTH = 10
BUILDER_PREFIX = "pvelab-builder"


def template_key(spec: "LabSpec") -> str:
    """A short content hash of everything the template holds; a new key means a new template."""
    ceph = spec.ceph
    facts = {
        "pve_version": spec.pve_version, "repository": spec.repository.component,
        "keyring": spec.repository.keyring_sha256 or "", "image": spec.image.file_id or spec.image.url,
        "image_checksum": spec.image.checksum or "",
        "ceph": [ceph.release, ceph.repository] if ceph.enabled else None,
        "scripts": {name: script_text(name) for name in BAKED_SCRIPTS} | {LIBRARY: library_text()},
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return digest[:KEY_LENGTH]


def builder_hostname(spec: "LabSpec") -> str:
    """The builder's host name: never a lab node's name, and it names the key (visible in the outer UI)."""
    return f"{BUILDER_PREFIX}-{template_key(spec)[:6]}"


def builder_ip(spec: "LabSpec") -> str:
    """The builder's lab address: template.builderAddress, or the first one after the nodes (and QDevice VM)."""
    if spec.template.builder_address:
        return spec.template.builder_address
    # after the nodes, and after the QDevice VM that takes the address after them (pvelab/qdevice.py)
    return str(ipaddress.ip_address(spec.network.first_address) + spec.nodes.count + (1 if spec.nodes.qdevice else 0))


def validate_template(spec: "LabSpec") -> list[str]:
    """The cross-field rule of the template keys (their shapes are in spec.FIELD_RULES): the builder's address
    must be a free host address of the lab network. Each problem names its key."""
    from .spec import _key  # one wording for every key

    problems: list[str] = []
    tpl = spec.template
    if spec.nodes.source != "template" or tpl.vm_id is not None:
        return problems  # no builder here: its address does not matter
    try:
        net = ipaddress.ip_network(spec.network.cidr, strict=False)
        first = ipaddress.ip_address(spec.network.first_address)
        address = ipaddress.ip_address(builder_ip(spec))
    except ValueError:
        return problems  # a malformed address is reported by its own field rule
    key = "template.builderAddress" if tpl.builder_address else "network.firstAddress"
    taken = set(range(int(first), int(first) + spec.nodes.count + (1 if spec.nodes.qdevice else 0)))
    if address not in net or address in (net.network_address, net.broadcast_address):
        problems.append(f"{_key(key)}: the template builder's address {address} is not a usable host of {net}; "
                        f"set template.builderAddress to a free address in the lab network")
    elif int(address) in taken or str(address) == spec.network.gateway:
        problems.append(f"{_key(key)}: the template builder's address {address} is taken by a node, the QDevice VM "
                        f"or the gateway; set template.builderAddress to a free address in the lab network")
    return problems


# Storages whose raw volumes qemu-server can clone linked (has_feature 'clone' on a base volume):
# LVM-thin and ZFS (thin snapshots), Ceph RBD (layering). File storages need qcow2, LVM thick cannot.
LINKED_CLONE_TYPES = ("lvmthin", "zfspool", "rbd")


def linked_clone_problem(storage: str, storage_type: str) -> Optional[str]:
    """Why linked clones of the template cannot live on this storage (None when they can)."""
    if storage_type in LINKED_CLONE_TYPES:
        return None
    return (f"storage {storage} is of type {storage_type or 'unknown'}: no linked clones of the template's raw "
            f"disk there (only {', '.join(LINKED_CLONE_TYPES)})")


def local_script_command(name: str, args: tuple[str, ...] = ()) -> str:
    """The command that runs components/scripts/<name>.sh on the machine running pulumi (a local step).

    Like node_script.script_command, but in a private temporary folder that is removed afterwards: a local
    step leaves nothing in the user's HOME. Its variables come from the command's environment (secrets too).
    """
    run = " ".join(["bash", '"$d/' + name + '.sh"', *map(shlex.quote, args)])
    text = script_text(name)
    return (
        'd="$(mktemp -d)" && trap \'rm -rf "$d"\' EXIT && mkdir -p "$d/lib" && '
        # lib/common.sh and every other lib/*.sh the script sources, as node_script.script_command ships them
        + "".join(f"cat > \"$d/{lib}\" <<'{HEREDOC_MARK}'\n{library_text(lib)}{HEREDOC_MARK}\n"
                  for lib in libraries_of(text))
        + f"cat > \"$d/{name}.sh\" <<'{HEREDOC_MARK}'\n{text}{HEREDOC_MARK}\n"
        + f"{run}\n"
    )


def template_env(spec: "LabSpec", endpoint: Optional[str] = None) -> Mapping[str, str]:
    """The plain (non-secret) variables of the outer-template step."""
    return {"PVE_ENDPOINT": endpoint or spec.outer.endpoint, "PVE_NODE": spec.outer.node,
            "PVE_INSECURE": "true" if spec.outer.insecure else "false",
            "DEADLINE_S": str(spec.template.seal_timeout_s), "POLL_S": "5"}
