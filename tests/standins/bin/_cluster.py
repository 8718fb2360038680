"""Cluster state shared by the stand-in pvecm and pvesh (what corosync and pmxcfs keep on a real cluster).

State under $STANDIN_STATE:
  cluster/clusters/<name>.json   one corosync config: name, config_version, links, nodes
                                 ({node: {nodeid, quorum_votes, ring0_addr[, ring1_addr]}}), and `settling`
                                 (answers the next `pvecm status` calls give while corosync restarts)
  cluster/clusters/<name>.cfs-lock  the cluster-wide corosync.conf lock a join holds
  cluster/instant-restart        present: corosync restarts at once after create/join (no settling answers)
  nodes/<node>/cluster           the cluster this node's /etc/pve/corosync.conf belongs to (absent: none)
  nodes/<node>/down              present: the node is powered off (no vote, API unreachable)
  nodes/<node>/root-password     the node's root password (`pvecm add` logs in to the member with it)
  nodes/<node>/fingerprint       overrides the node's API certificate fingerprint (default: from its name)
  nodes/<node>/guests            present: the node has guests (a join refuses)
  nodes/<node>/addresses         the IPv4 addresses configured on the node, one a line (a join's links
                                 must be among them: Setup.pm assert_joinable)
  nodes/<node>/corosync-blocked  present: joined, but its corosync reaches no other node (fault corosync-blocked):
                                 no vote, and its /etc/pve stays empty
  nodes/<node>/pmxcfs-down       present: /etc/pve is not mounted (every pvecm command refuses, exit 2)
  nodes/<node>/pvecm-add-seen.txt   what each `pvecm add` saw of its process (argv, parents, environment)
Every member's `$PVE_LAB_ROOT/etc/pve/corosync.conf` (nodes/<node>/root/..., as tests/node_runner lays
out a node) is rewritten whenever its cluster changes, as pmxcfs shares /etc/pve.
Tests use the helpers at the bottom (`seed_foreign_cluster`, `power_off`, `set_root_password`, ...).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from standin_lib import die, fault, locked_json, log_call, node, root, state_dir  # noqa: E402,F401 (re-exported)

COROSYNC_CONF = "etc/pve/corosync.conf"
LOCAL_COROSYNC_CONF = "etc/corosync/corosync.conf"  # pvecm create/add write these outside pmxcfs
AUTHKEY = "etc/corosync/authkey"
JOIN_HOLD_S = 0.05  # how long a join holds the cluster lock (so joins at the same time collide)
LOCK_WAIT_S = 0.1  # how long a join waits for that lock (the real one waits 10 s)
AFTER_CREATE = ["cmap"]  # corosync and pmxcfs restart: what quorum queries answer while they settle
AFTER_JOIN = ["noquorum"]


# --- paths and small state files -------------------------------------------------------------------

def clusters_dir(state: Path | None = None) -> Path:
    return (state or state_dir()) / "cluster" / "clusters"


def cluster_path(name: str, state: Path | None = None) -> Path:
    return clusters_dir(state) / f"{name}.json"


def node_path(name: str, state: Path | None = None) -> Path:
    d = (state or state_dir()) / "nodes" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def node_root(name: str, state: Path | None = None) -> Path:
    """The node's file tree, as tests/node_runner.FakeNode lays it out (its PVE_LAB_ROOT)."""
    if state is None and name == node():
        return root()
    return node_path(name, state) / "root"


def cluster_of(name: str, state: Path | None = None) -> str | None:
    path = node_path(name, state) / "cluster"
    return path.read_text().strip() or None if path.exists() else None


def is_up(name: str, state: Path | None = None) -> bool:
    return not (node_path(name, state) / "down").exists()


def fingerprint(name: str, state: Path | None = None) -> str:
    """The node's API certificate SHA-256 fingerprint: deterministic per node name unless a test set one."""
    override = node_path(name, state) / "fingerprint"
    if override.exists():
        return override.read_text().strip()
    digest = hashlib.sha256(f"stand-in pveproxy certificate of {name}".encode()).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def local_addresses(name: str) -> list[str]:
    path = node_path(name) / "addresses"
    if not path.exists():
        die(f"stand-in pvecm: no addresses known for {name} (tests call _cluster.set_addresses)", 2)
    return path.read_text().split()


def write_local_corosync(name: str) -> None:
    """corosync-keygen's authkey and the local /etc/corosync/corosync.conf of this node (create, finish_join)."""
    data = load_cluster(name)
    for rel, text in ((AUTHKEY, "stand-in corosync authkey\n"), (LOCAL_COROSYNC_CONF, render_corosync_conf(data))):
        path = root() / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def root_password(name: str) -> str | None:
    path = node_path(name) / "root-password"
    return path.read_text().rstrip("\n") if path.exists() else None


def load_cluster(name: str, state: Path | None = None) -> dict | None:
    path = cluster_path(name, state)
    return json.loads(path.read_text()) if path.exists() else None


@contextmanager
def cluster_state(name: str):
    """Locked read-modify-write of one cluster's config; rewrites the members' corosync.conf after."""
    with locked_json(cluster_path(name), None) as holder:
        yield holder
    if holder["data"] is not None:
        for member in holder["data"]["nodes"]:
            # pmxcfs shares /etc/pve with the nodes running it in this cluster, not with a VM rebuilt under
            # a member's name (create/add write the new member's copy once it holds the config), nor with a
            # member whose corosync reaches no other node (its /etc/pve cannot sync).
            if cluster_of(member) == holder["data"]["name"] and not (node_path(member) / "corosync-blocked").exists():
                write_corosync_conf(holder["data"], member)


def my_cluster() -> dict | None:
    """The config this node's corosync.conf belongs to, or None when it is in no cluster."""
    name = cluster_of(node())
    return load_cluster(name) if name else None


def find_member(address: str) -> tuple[dict, str] | None:
    """(cluster, node) whose node answers on `address` (a link address or the node name)."""
    d = clusters_dir()
    for path in sorted(d.glob("*.json")) if d.exists() else []:
        data = json.loads(path.read_text())
        for member, info in (data or {"nodes": {}})["nodes"].items():
            if address in (member, info.get("ring0_addr"), info.get("ring1_addr")):
                return data, member
    return None


# --- quorum ---------------------------------------------------------------------------------------

def members_up(data: dict) -> list[str]:
    """Members running corosync for this cluster: powered on, and still holding its config (a VM rebuilt under
    a member's name is a fresh install: it is listed in the nodelist, but it is not a corosync member)."""
    return [n for n in sorted(data["nodes"], key=lambda n: data["nodes"][n]["nodeid"])
            if is_up(n) and cluster_of(n) == data["name"]]


def qdevice_vote(data: dict) -> int:
    """A configured QDevice (ffsplit, 1 vote) votes for the nodes that are up while its QNetd host is up."""
    dev = data.get("qdevice")
    if not dev or not members_up(data):
        return 0
    host = qnetd_node(dev["host"])
    return dev.get("votes", 1) if host and is_up(host) else 0


def qnetd_node(address: str, state: Path | None = None) -> str | None:
    """The fake node at `address` (tests map addresses to names in cluster/hosts.json)."""
    path = (state or state_dir()) / "cluster" / "hosts.json"
    return json.loads(path.read_text()).get(address) if path.exists() else None


def votes(data: dict) -> tuple[int, int, int]:
    """(expected votes, total votes of the nodes that are up, votes needed for quorum)."""
    expected = sum(i["quorum_votes"] for i in data["nodes"].values())
    total = sum(data["nodes"][n]["quorum_votes"] for n in members_up(data))
    if data.get("qdevice"):
        expected += data["qdevice"].get("votes", 1)
        total += qdevice_vote(data)
    return expected, total, expected // 2 + 1


def settling_after(change: list[str]) -> list[str]:
    """The settling answers after a create or join (none when a test made restarts instant)."""
    return [] if (state_dir() / "cluster" / "instant-restart").exists() else list(change)


def next_settling_answer(name: str) -> str | None:
    """Corosync restarts after create/join: each quorum query (status, a join's check) uses up one answer."""
    with cluster_state(name) as holder:
        settling = holder["data"].get("settling") or []
        return settling.pop(0) if settling else None


def quorate(data: dict) -> bool:
    expected, total, needed = votes(data)
    return total >= needed and not data.get("settling") and not fault("no-quorum")


# --- corosync.conf --------------------------------------------------------------------------------

def render_corosync_conf(data: dict) -> str:
    lines = ["logging {", "  debug: off", "  to_syslog: yes", "}", "", "nodelist {"]
    for member, info in sorted(data["nodes"].items(), key=lambda kv: kv[1]["nodeid"]):
        lines += ["  node {", f"    name: {member}", f"    nodeid: {info['nodeid']}",
                  f"    quorum_votes: {info['quorum_votes']}"]
        lines += [f"    ring{link}_addr: {info[f'ring{link}_addr']}" for link in data["links"]]
        lines.append("  }")
    lines += ["}", "", "quorum {", "  provider: corosync_votequorum"]
    dev = data.get("qdevice")
    if dev:  # pvecm.pm setup_qdevice: model net, tls on, host, algorithm ffsplit, votes 1
        lines += ["  device {", "    model: net", "    net {", "      algorithm: ffsplit",
                  f"      host: {dev['host']}", "      tls: on", "    }", f"    votes: {dev.get('votes', 1)}", "  }"]
    lines += ["}", "", "totem {",
              f"  cluster_name: {data['name']}", f"  config_version: {data['config_version']}"]
    for link in data["links"]:
        lines += ["  interface {", f"    linknumber: {link}", "  }"]
    lines += ["  ip_version: ipv4-6", "  link_mode: passive", "  secauth: on", "  version: 2", "}"]
    return "\n".join(lines) + "\n"


def write_corosync_conf(data: dict, member: str, state: Path | None = None) -> None:
    path = node_root(member, state) / COROSYNC_CONF
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_corosync_conf(data)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def new_cluster(name: str, member: str, links: dict[int, str], votes_: int = 1, nodeid: int = 1) -> dict:
    return {"name": name, "config_version": 1, "links": sorted(links), "settling": [],
            "nodes": {member: {"nodeid": nodeid, "quorum_votes": votes_,
                               **{f"ring{i}_addr": a for i, a in links.items()}}}}


@contextmanager
def cluster_lock(name: str, wait_s: float = LOCK_WAIT_S):
    """The cluster-wide corosync.conf lock (cfs lock); yields False when it stayed busy for wait_s."""
    path = clusters_dir() / f"{name}.cfs-lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- helpers for tests ----------------------------------------------------------------------------

def set_root_password(state: Path, name: str, password: str) -> None:
    (node_path(name, state) / "root-password").write_text(password + "\n")


def set_addresses(state: Path, name: str, *addresses: str) -> None:
    (node_path(name, state) / "addresses").write_text("".join(f"{a}\n" for a in addresses))


def set_fingerprint(state: Path, name: str, value: str) -> None:
    (node_path(name, state) / "fingerprint").write_text(value + "\n")


def power_off(state: Path, name: str) -> None:
    (node_path(name, state) / "down").write_text("")


def power_on(state: Path, name: str) -> None:
    (node_path(name, state) / "down").unlink(missing_ok=True)


def add_guests(state: Path, name: str) -> None:
    (node_path(name, state) / "guests").write_text("100\n")


def seed_foreign_cluster(state: Path, name: str, cluster: str, address: str) -> None:
    """Make `name` a one-node cluster `cluster` of its own (e.g. a VM reused from another lab)."""
    data = new_cluster(cluster, name, {0: address})
    path = cluster_path(cluster, state)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    (node_path(name, state) / "cluster").write_text(cluster + "\n")
    write_corosync_conf(data, name, state)
    for rel in (AUTHKEY, LOCAL_COROSYNC_CONF):
        (node_root(name, state) / rel).parent.mkdir(parents=True, exist_ok=True)
        (node_root(name, state) / rel).write_text(render_corosync_conf(data) if rel == LOCAL_COROSYNC_CONF else "key\n")


def leave_all_clusters(state: Path, name: str) -> None:
    """Undo a seeded membership, as reinstalling the node would (tests only; no real pvecm does this)."""
    cluster = cluster_of(name, state)
    (node_path(name, state) / "cluster").unlink(missing_ok=True)
    for rel in (COROSYNC_CONF, AUTHKEY, LOCAL_COROSYNC_CONF):
        (node_root(name, state) / rel).unlink(missing_ok=True)
    if cluster and (data := load_cluster(cluster, state)):
        data["nodes"].pop(name, None)
        if data["nodes"]:
            cluster_path(cluster, state).write_text(json.dumps(data, indent=1, sort_keys=True))
        else:
            cluster_path(cluster, state).unlink()


def activate_ha(state: Path) -> None:
    """The HA stack is in use (a resource was added once): `ha-manager status` lists the master and each LRM."""
    (state / "cluster").mkdir(parents=True, exist_ok=True)
    (state / "cluster" / "ha-active").write_text("")


def rebuild_node(state: Path, name: str) -> None:
    """The node's VM deleted and created again with the same name (a fresh PVE install, in no cluster): its
    state folder is wiped, except its configured addresses (cloud-init gives the new VM the same ones); the
    cluster still lists it until `pvecm delnode` (tests only)."""
    import shutil

    addresses = state / "nodes" / name / "addresses"
    kept = addresses.read_text() if addresses.exists() else None
    shutil.rmtree(state / "nodes" / name, ignore_errors=True)
    if kept is not None:
        node_path(name, state)
        addresses.write_text(kept)


def settle_now(state: Path, cluster: str) -> None:
    """Let corosync finish restarting: the next `pvecm status` answers from the votes alone."""
    path = cluster_path(cluster, state)
    data = json.loads(path.read_text())
    data["settling"] = []
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
