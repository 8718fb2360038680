"""The class package cache (roster `classCache:`): one small Debian VM running apt-cacher-ng on the class
network, made by the class-images stack, so the Debian and Proxmox repositories are fetched from the
internet once per class. Every student's lab (and every template builder) gets `aptProxy` pointing at it,
unless the roster's lab sets its own.

    classCache:
      node: pve1                 # the outer node that runs it (default: the first outer node)
      address: 10.100.255.10/24  # its address on the class network, reachable from every student subnet
      gateway: 10.100.255.1
      vlanTag: 1099              # its VLAN on the class bridge (lab.outer.bridge), if any
      port: 3142                 # apt-cacher-ng's port
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Optional

KEYS = {"node", "address", "gateway", "vlanTag", "port", "memoryMiB", "diskGiB"}


@dataclass(frozen=True)
class ClassCache:
    address: str  # with its prefix, e.g. 10.100.255.10/24
    gateway: str
    node: Optional[str] = None
    vlan_tag: Optional[int] = None
    port: int = 3142
    memory_mib: int = 1024
    disk_gib: int = 32

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def parse_class_cache(raw: Any, problems: list[str]) -> Optional[ClassCache]:
    if raw is None:
        return None
    where = "roster.classCache"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping (address, gateway, node, vlanTag, port)")
        return None
    for key in raw:
        if key not in KEYS:
            problems.append(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(KEYS))})")
    address, gateway = raw.get("address"), raw.get("gateway")
    try:
        iface = ipaddress.ip_interface(str(address))
        if "/" not in str(address) or iface.network.prefixlen >= 31:
            raise ValueError
    except ValueError:
        problems.append(f"{where}.address: {address!r} is not an address with its prefix, e.g. 10.100.255.10/24")
        return None
    try:
        gw = ipaddress.ip_address(str(gateway))
        if gw not in iface.network or gw == iface.ip:
            raise ValueError
    except ValueError:
        problems.append(f"{where}.gateway: {gateway!r} is not another address in {iface.network}")
        return None
    ints = {}
    for key, low, high, default in (("vlanTag", 1, 4094, None), ("port", 1, 65535, 3142),
                                    ("memoryMiB", 512, 65536, 1024), ("diskGiB", 8, 4096, 32)):
        value = raw.get(key, default)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high):
            problems.append(f"{where}.{key}: {value!r} is out of range (allowed: {low}..{high})")
            value = default
        ints[key] = value
    node = raw.get("node")
    return ClassCache(address=str(iface), gateway=str(gw), node=str(node) if node else None, vlan_tag=ints["vlanTag"],
                      port=ints["port"], memory_mib=ints["memoryMiB"], disk_gib=ints["diskGiB"])


def assign_proxy(lab: dict, cache: Optional[ClassCache]) -> dict:
    """A lab fetches through the class cache unless it names its own aptProxy."""
    if cache is not None and not lab.get("aptProxy"):
        lab["aptProxy"] = cache.url
    return lab


@dataclass
class CacheSite:
    """Where the class-images stack makes the cache VM: derived from the first student's lab on its node."""

    cache: ClassCache
    node: str
    storage: str
    image_file_id: str
    bridge: str
    dns: list
    domain: str
    tags: list


def cache_site(cache: Optional[ClassCache], stacks: list, node_order: dict) -> tuple[Optional[CacheSite], list[str]]:
    if cache is None:
        return None, []
    placed = sorted((s for s in stacks if s.outer_node), key=lambda s: (node_order.get(s.outer_node, 0), s.slot))
    if cache.node:
        placed = [s for s in placed if s.outer_node == cache.node]
    if not placed:
        return None, [f"roster.classCache.node: no student is placed on '{cache.node}', so the class image is not "
                      f"downloaded there; leave classCache.node out (the first outer node with students is used)"]
    lab = placed[0].lab
    return CacheSite(cache=cache, node=placed[0].outer_node, storage=lab["outer"].get("storage", "local-lvm"),
                     image_file_id=lab["image"]["fileId"], bridge=lab["outer"].get("bridge", "vmbr0"),
                     dns=list(lab["network"].get("dns") or [cache.gateway]),
                     domain=(lab.get("cluster") or {}).get("domain", "lab.internal"),
                     tags=list(lab.get("tags") or ["pve-lab"])), []
