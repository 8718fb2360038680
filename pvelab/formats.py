"""The shapes PVE itself gives its identifiers, and small rule objects to check a value against them.

Every pattern names where PVE (or Ceph, Linux) defines it, and is applied to the whole string
(`fullmatch`: a trailing newline never slips through as it does with `re.match(...$)`). Patterns use no
flags and only syntax ECMA-262 shares, so the JSON Schema (pvelab/schema.py) carries them unchanged.
Shared by the lab spec (pvelab/spec.py), the roster (pvelab/classroom/roster.py) and the JSON schema.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

# pve-common src/PVE/JSONSchema.pm pve_verify_node_name (format 'pve-node'); also `pvecm create`'s clustername
# (pve-cluster src/PVE/API2/ClusterConfig.pm: format pve-node, maxLength 15). DNS labels are at most 63.
PVE_NODE_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?")
# pve-common JSONSchema.pm parse_id (pve-storage-id): at least 2 characters, letter first, no '-'/'.'/'_' last.
STORAGE_ID_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9._-]*[a-zA-Z0-9]")
# pve-common JSONSchema.pm parse_bridge_id (pve-bridge-id); Linux interface names are at most 15 (IFNAMSIZ - 1).
BRIDGE_RE = re.compile(r"[-_.A-Za-z0-9]+")
# pve-access-control src/PVE/AccessControl.pm verify_poolname (pve-poolid): up to 3 levels separated by '/'.
POOL_ID_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+){0,2}")
# pve-common JSONSchema.pm $CONFIGID_RE (pve-configid): HA rule ids, role ids.
CONFIG_ID_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9_-]+")
# pve-network SDN ZonePlugin/VnetPlugin parse_sdn_{zone,vnet}_id: letter first, letters/digits, 2..8.
SDN_ID_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9]*[a-zA-Z0-9]")
SDN_ID_MAX = 8
# pve-common JSONSchema.pm $PVE_TAG_RE (pve-tag).
PVE_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_+.-]*")
# pve-storage src/PVE/Storage.pm $SAFE_CHAR_CLASS_RE + $UPLOAD_IMPORT_EXT_RE_1 (import content, no .ova for a disk).
IMPORT_FILE_RE = re.compile(r"[a-zA-Z0-9.+=_-]+\.(qcow2|raw|vmdk)")
# pve-access-control src/PVE/Auth/Plugin.pm: $user_regex@$realm_regex, 3..64 characters (verify_username),
# realms at most 32 (pve-realm); role ids src/PVE/AccessControl.pm verify_rolename.
USER_ID_RE = re.compile(r"[^\s:/@\x00-\x1f\x7f]+@[A-Za-z][A-Za-z0-9._-]+")
USER_ID_MAX = 64
REALM_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]+")
REALM_MAX = 32
ROLE_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
# A DNS label (RFC 1035, lower case as the lab writes it into /etc/hosts); names of nodes start with a letter.
DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
HOSTNAME_RE = re.compile(r"[a-z]([a-z0-9-]*[a-z0-9])?")
MAX_LABEL = 63
MAX_FQDN = 253
# Linux user names (useradd's default NAME_REGEX).
UNIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
HEX_RE = re.compile(r"[0-9a-f]+")
# pve-storage src/PVE/API2/Storage/Status.pm download-url 'checksum-algorithm' enum, and each digest's length.
CHECKSUM_HEX_LEN = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
# What a guest image booted inside a student's lab must be checked with (md5/sha1 are not accepted there).
TEST_VM_CHECKSUMS = ("sha256", "sha512")
# qemu-server src/PVE/QemuServer/Memory.pm get_max_mem: at most 4 TiB of memory per VM.
MAX_VM_MEMORY_MIB = 4 * 1024 * 1024
# pve-manager PVE/API2/Ceph/Pool.pm: pg_num 1..32768.
MAX_PG_NUM = 32768


def show(value: Any, limit: int = 60) -> str:
    """A value as it may appear in a one-line message: quoted, control characters escaped, cut when long."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def key_name(key: Any) -> str:
    """A mapping key as it may appear in a message path (a key with spaces or newlines is shown quoted)."""
    text = str(key)
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", text):
        return text
    return show(key, 40)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- rules (one per config field)


@dataclass(frozen=True)
class Text:
    """A string field of a given shape."""

    pattern: re.Pattern
    allowed: str  # what is allowed, in words, for the message
    max_len: Optional[int] = None
    min_len: int = 1
    says: Optional[str] = None  # the whole complaint instead of "is not allowed: <size>, <allowed>"

    def problem(self, value: Any) -> Optional[str]:
        if not isinstance(value, str):
            return f"expected text ({self.allowed}), got {show(value)}"
        if not (self.min_len <= len(value) <= (self.max_len or len(value))) or not self.pattern.fullmatch(value):
            if self.says:
                return f"{show(value)} {self.says}"
            size = f"{self.min_len}-{self.max_len} characters, " if self.max_len else ""
            return f"{show(value)} is not allowed: {size}{self.allowed}"
        return None


@dataclass(frozen=True)
class Bounds:
    """An integer field between minimum and maximum."""

    minimum: int
    maximum: int

    def problem(self, value: Any) -> Optional[str]:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"expected an integer, got {show(value)}"
        if not self.minimum <= value <= self.maximum:
            return f"{value} is out of range (allowed: {self.minimum}..{self.maximum})"
        return None


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values."""

    values: tuple
    says: str = "is not allowed"

    def problem(self, value: Any) -> Optional[str]:
        if value not in self.values or isinstance(value, bool) != isinstance(self.values[0], bool):
            return f"{show(value)} {self.says} (allowed: {', '.join(str(v) for v in self.values)})"
        return None


@dataclass(frozen=True)
class HttpsUrl:
    """An https:// URL (a token, an image or a package key never travels over plain HTTP)."""

    base_only: bool = False  # an API base URL: scheme, host and port, no path
    missing: Optional[str] = None  # the message for an empty value

    def problem(self, value: Any) -> Optional[str]:
        if not isinstance(value, str):
            return f"expected an https:// URL, got {show(value)}"
        if value == "" and self.missing:
            return self.missing
        reason = url_problem(value, self.base_only)
        return f"{show(value)} {reason}" if reason else None


def url_problem(url: str, base_only: bool = False) -> Optional[str]:
    """Why `url` is not a usable https URL (None when it is)."""
    if not url or any(c.isspace() or ord(c) < 32 for c in url):
        return "is not a URL (empty, or has spaces or control characters)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme == "http":
        return "uses plain http://; use https:// (the API token / download would travel unencrypted)"
    if parts.scheme != "https" or not parts.hostname:
        return ("is not an API base URL like https://host:8006/" if base_only
                else "is not an https:// URL like https://host/path")
    if port == 0:
        return "has port 0 (allowed: 1..65535)"
    if parts.username or parts.password:
        return "must not hold a user or password (secrets go in Pulumi secrets)"
    if base_only and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "is not an API base URL like https://host:8006/ (no path)"
    return None
