"""Run the real Pulumi program (`__main__.py`) in-process with Pulumi's mock runtime and record the graph.

This is what `pulumi preview` would see, without the CLI, the provider plugins or a host: every resource
with its type, parent, dependencies, provider, options and inputs (secrets still wrapped). The mocks
answer with realistic outputs (IDs in the provider's format, `pvecm status` text, fingerprints) so that
values which flow between resources are exercised. Used by `plan` and by the tests.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import runpy
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from .stackfile import PROJECT_DIR, StackConfig

MAIN = PROJECT_DIR / "__main__.py"
SECRET_SIG = rpc._special_secret_sig  # marks a secret value in serialized inputs
SIG_KEY = rpc._special_sig_key

# Stand-in secret values for offline evaluation. Tests look for them in plain text to prove they never leak.
PLACEHOLDER_SECRETS = {
    "pve-lab:outerApiToken": "root@pam!pvelab=00000000-1111-2222-3333-444444444444",
}
MOCK_ROOT_PASSWORD = "Mock-Root-Pw-7f3a9c2e"
MOCK_PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nbW9jay1wcml2YXRlLWtleS1mb3ItdGVzdHM=\n-----END OPENSSH PRIVATE KEY-----\n"
MOCK_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockPublicKeyForPveLabTests pve-lab"
MOCK_NEXT_VMID = 199  # what /cluster/nextid would hand out to a VM created without a VMID
MOCK_FINGERPRINT = ":".join(f"{(i * 37) % 256:02X}" for i in range(32))


@dataclass
class Record:
    urn: str
    type: str
    name: str
    custom: bool
    parent: str
    dependencies: list[str]
    provider: str
    providers: dict[str, str]
    inputs: dict[str, Any]  # secrets wrapped as {SIG_KEY: SECRET_SIG, "value": ...}
    options: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def provider_urn(self) -> str:
        return self.provider.split("::")[0] + "::" + self.provider.split("::")[1] if self.provider.count("::") >= 2 else self.provider

    def plain(self, key: str, default: Any = None) -> Any:
        return unwrap(self.inputs.get(key, default))


def unwrap(value: Any) -> Any:
    """Inputs with secrets unwrapped (for assertions on values)."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plaintext_strings(value: Any) -> Iterable[str]:
    """Every string in `value` that is NOT inside a secret wrapper."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return
        for v in value.values():
            yield from plaintext_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plaintext_strings(v)
    elif isinstance(value, str):
        yield value


class LabMocks(pulumi_mocks.Mocks):
    """Answers like the providers would: IDs in their format and the outputs later steps consume."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        t, inputs = args.typ, dict(args.inputs)
        state = dict(inputs)
        rid = f"{args.name}-id"
        if t == "proxmoxve:index/vmLegacy:VmLegacy":
            # No vmId (the template builder): the provider takes PVE's next free id.
            rid = str(int(unwrap(inputs.get("vmId", MOCK_NEXT_VMID))))
            state.setdefault("vmId", int(rid))
            # bpg fills each NIC's MAC address (a new one for every VM it creates).
            state["networkDevices"] = [{**d, "macAddress": mock_mac(args.name, i)}
                                       for i, d in enumerate(inputs.get("networkDevices") or [])]
        elif t == "proxmoxve:download/fileLegacy:FileLegacy":
            rid = f"{inputs.get('datastoreId')}:{inputs.get('contentType')}/{inputs.get('fileName')}"
        elif t == "proxmoxve:ceph/pool:Pool":
            rid = str(inputs.get("name"))
        elif t == "random:index/randomPassword:RandomPassword":
            state["result"] = MOCK_ROOT_PASSWORD
        elif t == "tls:index/privateKey:PrivateKey":
            state.update(privateKeyOpenssh=MOCK_PRIVATE_KEY, publicKeyOpenssh=MOCK_PUBLIC_KEY + "\n",
                         privateKeyPem=MOCK_PRIVATE_KEY, publicKeyPem="mock")
        elif t in ("command:remote:Command", "command:local:Command"):
            state.update(stdout=mock_stdout(args.name), stderr="")
        return rid, state

    def call(self, args: pulumi_mocks.MockCallArgs):
        if args.token == "proxmoxve:index/getUserLegacy:getUserLegacy":  # an existing user: found as asked
            return {"id": args.args.get("userId"), "userId": args.args.get("userId"), "enabled": True}
        return {}, None


MOCK_MAC_PREFIX = "BC:24:11"  # Proxmox's OUI, as PVE generates them


def mock_mac(resource_name: str, nic: int) -> str:
    """A MAC address for a mock VM's NIC, stable per resource name (tests change it to mimic a rebuilt VM)."""
    import hashlib

    salt = "rebuilt:" if resource_name in MOCK_REBUILT_VMS else ""
    digest = hashlib.sha256(f"{salt}{resource_name}/{nic}".encode()).hexdigest()
    return f"{MOCK_MAC_PREFIX}:{digest[0:2]}:{digest[2:4]}:{digest[4:6]}".upper()


# Names of VM resources the mock answers as created anew (a new MAC): a VM replaced or re-created.
MOCK_REBUILT_VMS: set[str] = set()


def mock_stdout(name: str) -> str:
    """What each node step prints, by the step's resource name suffix."""
    if name.endswith("-fingerprint") or "-fingerprint-" in name:
        return MOCK_FINGERPRINT + "\n"
    if name.endswith("-quorum"):
        return ("Cluster information\n-------------------\nName:             pve-lab\n"
                "Quorum information\n------------------\nNodes:            3\nQuorate:          Yes\n")
    if name.endswith("-ready"):
        return "pve-manager/9.1.1/42db4a6cf33dac83 (running kernel: 6.17.2-1-pve)\n"
    if name.endswith("-convert"):  # outer-template.sh prints the template's VMID
        return f"{MOCK_NEXT_VMID}\n"
    if name.endswith("-health"):
        return "  cluster:\n    health: HEALTH_OK\n"
    return ""


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, keeping what MockResourceArgs drops: parent, dependencies, options."""

    def __init__(self, mocks: pulumi_mocks.Mocks):
        super().__init__(mocks)
        self.records: list[Record] = []
        self.stack_outputs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            self.stack_urn = response.urn
            return response
        inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
        options = {
            "retainOnDelete": request.retainOnDelete if request.HasField("retainOnDelete") else False,
            "additionalSecretOutputs": list(request.additionalSecretOutputs),
            "ignoreChanges": list(request.ignoreChanges),
            "replaceOnChanges": list(request.replaceOnChanges),
            "deleteBeforeReplace": request.deleteBeforeReplace,
            "protect": request.protect if request.HasField("protect") else False,
            "deletedWith": request.deletedWith,
            "replaceWith": list(request.replace_with),
            "replacementTrigger": (json_format.MessageToDict(request.replacement_trigger)
                                   if request.HasField("replacement_trigger") else None),
        }
        record = Record(
            urn=response.urn, type=request.type, name=request.name, custom=bool(request.custom),
            parent=request.parent, dependencies=list(request.dependencies), provider=request.provider,
            providers=dict(request.providers), inputs=inputs, options=options,
        )
        with self._lock:
            self.records.append(record)
        return response

    def RegisterResourceOutputs(self, request):
        if request.urn == getattr(self, "stack_urn", None):
            self.stack_outputs = rpc.deserialize_properties(request.outputs, keep_unknowns=True)
        return super().RegisterResourceOutputs(request)


@dataclass
class Evaluation:
    records: list[Record]
    stack_outputs: dict[str, "ExportedValue"]
    error: Optional[str]  # the program's own error message (e.g. validation), as `pulumi up` shows it
    logs: list[str]

    @property
    def ok(self) -> bool:
        return self.error is None

    def by_urn(self) -> dict[str, Record]:
        return self._index[0]

    def of_type(self, typ: str) -> list[Record]:
        return [r for r in self.records if r.type == typ]

    def named(self, name: str) -> Record:
        matches = [r for r in self.records if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]

    def children(self, urn: str) -> list[Record]:
        return list(self._index[1].get(urn, ()))

    @functools.cached_property
    def _index(self) -> tuple[dict[str, Record], dict[str, list[Record]]]:
        """URN -> record and parent URN -> children, built once (depends_on walks them many times)."""
        by_urn, children = {}, {}
        for r in self.records:
            by_urn[r.urn] = r
            children.setdefault(r.parent, []).append(r)
        return by_urn, children

    def provider_of(self, record: Record) -> Optional[Record]:
        """The provider resource a custom resource uses (explicit or inherited), or None for a default one."""
        if not record.provider:
            return None
        urn = record.provider.rsplit("::", 1)[0]
        return self.by_urn().get(urn)

    def depends_on(self, a: Record, b: Record) -> bool:
        """True when `a` (transitively) waits for `b`."""
        by_urn, seen, stack = self.by_urn(), set(), list(a.dependencies)
        if a.provider:
            stack.append(a.provider.rsplit("::", 1)[0])
        while stack:
            urn = stack.pop()
            if urn == b.urn:
                return True
            if urn in seen or urn not in by_urn:
                continue
            seen.add(urn)
            dep = by_urn[urn]
            stack.extend(dep.dependencies)
            if dep.provider:
                stack.append(dep.provider.rsplit("::", 1)[0])
            # Waiting for a component means waiting for everything under it.
            stack.extend(c.urn for c in self.children(urn))
        return False


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}")


def evaluate_config(config: dict[str, str], secret_keys: Iterable[str] = (), stack: str = "lab",
                    project: str = "pve-lab", program: Path = MAIN) -> Evaluation:
    """Run `program` with `config` ("ns:key" -> JSON text / str) under the mock runtime."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    logger = logging.getLogger(f"pve-lab.evaluate.{id(loop)}")
    logger.propagate = False
    capture = _LogCapture()
    logger.addHandler(capture)
    mocks = LabMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_all_config(dict(config), list(secret_keys))
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor, logger=logger)
    error: Optional[str] = None
    outputs: dict = {}
    project_dir = str(program.parent)
    added = project_dir not in sys.path
    if added:
        sys.path.insert(0, project_dir)
    cwd = os.getcwd()
    try:
        os.chdir(project_dir)

        def run():
            runpy.run_path(str(program), run_name="__main__")

        with contextlib.redirect_stdout(io.StringIO()):
            _sync_await(run_pulumi_func(run))
            outputs = _sync_await(_resolve_exports())
    except pulumi.RunError as exc:
        error = str(exc)
    finally:
        os.chdir(cwd)
        if added:
            sys.path.remove(project_dir)
        pulumi.runtime.settings.reset_options()
        loop.close()
        asyncio.set_event_loop(None)
    return Evaluation(records=list(monitor.records), stack_outputs=outputs, error=error, logs=capture.lines)


@dataclass
class ExportedValue:
    value: Any
    secret: bool


async def _resolve_exports() -> dict[str, ExportedValue]:
    """The stack's exports (`pulumi.export`), resolved, each with whether it is a secret."""
    root = pulumi.runtime.settings.get_root_resource()
    result = {}
    for key, value in dict(getattr(root, "outputs", {}) or {}).items():
        out = pulumi.Output.from_input(value)
        result[key] = ExportedValue(await out.future(), bool(await out.is_secret()))
    return result


def evaluate_stack(stack_config: StackConfig, secrets: Optional[dict[str, str]] = None) -> Evaluation:
    """Evaluate a stack file. Secret keys the file holds encrypted (or lacks) get placeholders unless given."""
    config = stack_config.as_pulumi_config()
    secret_keys = set(stack_config.secure_keys)
    given = dict(PLACEHOLDER_SECRETS)
    given.update(secrets or {})
    for key, value in given.items():
        if value is None:
            config.pop(key, None)
            continue
        config[key] = value
        secret_keys.add(key)
    return evaluate_config(config, secret_keys, stack=stack_config.stack)
