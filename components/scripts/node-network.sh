#!/usr/bin/env bash
# node-network.sh - give the node the network of an ISO-installed PVE: its address on bridge vmbr0, written
# in /etc/network/interfaces (ifupdown2), so nested guests can have NICs ("bridge 'vmbr0' does not exist"
# otherwise). Run once PVE is installed.
# The Debian cloud image's cloud-init configured the NIC (netplan + systemd-networkd, or
# /etc/network/interfaces.d/50-cloud-init): its network config is turned off
# (/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg, cloud-init's documented switch) and its rendered
# files are moved to /var/backups/pve-lab-network, so after a reboot only /etc/network/interfaces applies.
# The address moves from the NIC to vmbr0 in one go (flush, `ifreload -a`) with SIGHUP ignored: the SSH
# session this runs in survives (same address, same MAC: a one-port bridge takes its port's MAC); if
# vmbr0 does not come up with the address, the old configuration is put back.
# Environment: NODE_IP, NODE_PREFIX (e.g. 24), GATEWAY. Optional: LINK1_IP + LINK1_PREFIX (the corosync
#   link1 NIC, kept as a plain static interface), DNS_SERVERS (space-separated), SEARCH_DOMAIN.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*

ROOT="${PVE_LAB_ROOT:-}"
BRIDGE="vmbr0"
INTERFACES="/etc/network/interfaces"
CLOUD_NETWORK_OFF="/etc/cloud/cloud.cfg.d/99-disable-network-config.cfg"
# What cloud-init renders, per renderer: netplan (Debian cloud images), ENI.
CLOUD_RENDERED=("/etc/netplan/50-cloud-init.yaml" "/etc/network/interfaces.d/50-cloud-init")
BACKUP_DIR="/var/backups/pve-lab-network"
WRITTEN_BY="# Written by pve-lab (node-network.sh)"
NETWORKD_STOPPED=""
INTERFACES_CHANGED=""

require_env() {
    require_vars "Run as: NODE_IP=10.10.10.11 NODE_PREFIX=24 GATEWAY=10.10.10.1 bash node-network.sh" \
        NODE_IP NODE_PREFIX GATEWAY
    require_ipv4 NODE_IP GATEWAY LINK1_IP
    # Both are written into /etc/resolv.conf: a newline would add lines of its own.
    require_single_line DNS_SERVERS SEARCH_DOMAIN
    local name server
    for server in ${DNS_SERVERS:-}; do
        (require_ipv4 server) 2>/dev/null ||
            fail "DNS_SERVERS=$(shown "$DNS_SERVERS") has $(shown "$server"), which is not an IPv4 address"
    done
    for name in NODE_PREFIX LINK1_PREFIX; do
        if [[ -n "${!name:-}" ]] && ! [[ "${!name}" =~ ^[0-9]+$ && "${!name}" -ge 1 && "${!name}" -le 32 ]]; then
            fail "$name='${!name}' is not a prefix length (1-32)"
        fi
    done
    if [[ -n "${LINK1_IP:-}" && -z "${LINK1_PREFIX:-}" ]]; then
        fail "LINK1_IP is set but LINK1_PREFIX is not"
    fi
}

# The link that holds IPv4 address $1 (first match), or nothing.
link_with_address() {
    ip -o -4 addr show | awk -v ip="$1" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }'
}

# The first port of the bridge, or nothing.
bridge_port() {
    ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' 'NR == 1 { print $2 }'
}

# The /etc/network/interfaces PVE's installer would write for this node (uplink $1, link1 NIC $2).
desired_interfaces() {
    local uplink="$1" link1_nic="${2:-}"
    printf '%s\n' "$WRITTEN_BY: the node's address on $BRIDGE, as a PVE ISO install has it." \
        "# cloud-init's network config is off ($CLOUD_NETWORK_OFF)." "" \
        "auto lo" "iface lo inet loopback" "" \
        "iface $uplink inet manual" ""
    if [[ -n "$link1_nic" ]]; then
        printf '%s\n' "auto $link1_nic" "iface $link1_nic inet static" "    address $LINK1_IP/$LINK1_PREFIX" ""
    fi
    printf '%s\n' "auto $BRIDGE" "iface $BRIDGE inet static" "    address $NODE_IP/$NODE_PREFIX" "    gateway $GATEWAY" \
        "    bridge-ports $uplink" "    bridge-stp off" "    bridge-fd 0" "" \
        "source /etc/network/interfaces.d/*"
}

# write_file PATH MODE < content: replace PATH (atomically) only when its bytes differ; true when it wrote.
write_file() {
    local path="$ROOT$1" mode="$2" tmp
    # Callers test the result, which turns off errexit in here: every write checks for itself.
    mkdir -p "$(dirname "$path")" || fail "cannot create the folder of $1"
    tmp="$(mktemp "$path.pve-lab.XXXXXX")" || fail "cannot write next to $1"
    cat >"$tmp" || fail "cannot write $tmp"
    if [[ -f "$path" && ! -L "$path" ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp" || fail "cannot set the mode of $tmp"
    mv -f "$tmp" "$path" || fail "cannot replace $1"
    log "wrote $1"
}

# keep_backup PATH: move PATH into BACKUP_DIR (once: the first, cloud-init's, version is the one kept).
keep_backup() {
    local path="$ROOT$1" target
    [[ -e "$path" || -L "$path" ]] || return 0
    target="$ROOT$BACKUP_DIR${1}"
    mkdir -p "$(dirname "$target")"
    if [[ -e "$target" ]]; then
        rm -f "$path"
    else
        mv "$path" "$target"
    fi
    log "moved $1 to $BACKUP_DIR (cloud-init's network configuration; not used any more)"
}

# PVE reads /etc/resolv.conf as a plain file (node DNS settings); a resolver symlink goes with networkd.
write_resolv_conf() {
    [[ -n "${DNS_SERVERS:-}" ]] || return 0
    local server
    {
        if [[ -n "${SEARCH_DOMAIN:-}" ]]; then
            printf 'search %s\n' "$SEARCH_DOMAIN"
        fi
        for server in $DNS_SERVERS; do
            printf 'nameserver %s\n' "$server"
        done
    } | write_file /etc/resolv.conf 0644 || true
}

write_configuration() {
    local uplink="$1" link1_nic="$2"
    if [[ ! -f "$ROOT$BACKUP_DIR$INTERFACES" && -f "$ROOT$INTERFACES" ]] && ! grep -q "^$WRITTEN_BY" "$ROOT$INTERFACES"; then
        mkdir -p "$ROOT$BACKUP_DIR/etc/network"
        cp -p "$ROOT$INTERFACES" "$ROOT$BACKUP_DIR$INTERFACES"
    fi
    printf '%s\n' "network: {config: disabled}" | write_file "$CLOUD_NETWORK_OFF" 0644 || true
    if desired_interfaces "$uplink" "$link1_nic" | write_file "$INTERFACES" 0644; then
        INTERFACES_CHANGED=1
    fi
    local rendered
    for rendered in "${CLOUD_RENDERED[@]}"; do
        keep_backup "$rendered"
    done
    write_resolv_conf
}

# systemd-networkd must let go of the NIC and stay off at boot (its socket would start it again, and
# wait-online would hold the boot for two minutes with nothing to wait for).
NETWORKD_UNITS=(systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service)
stop_networkd() {
    if systemctl is-active --quiet systemd-networkd.service; then
        systemctl disable --now "${NETWORKD_UNITS[@]}" >&2
        NETWORKD_STOPPED=1
        log "systemd-networkd stopped and disabled (ifupdown2 manages the network now)"
    fi
}

bridge_is_up() {
    local uplink="$1"
    [[ "$(link_with_address "$NODE_IP")" == "$BRIDGE" && "$(bridge_port)" == "$uplink" ]] &&
        ip -4 route show default | grep -q " dev $BRIDGE\b"
}

# Put the old configuration back: cloud-init's files and the address on the NIC.
roll_back() {
    local uplink="$1" rendered
    log "vmbr0 did not come up with $NODE_IP: putting the previous network configuration back"
    for rendered in "${CLOUD_RENDERED[@]}" "$INTERFACES"; do
        if [[ -e "$ROOT$BACKUP_DIR$rendered" ]]; then
            mkdir -p "$(dirname "$ROOT$rendered")"
            cp -p "$ROOT$BACKUP_DIR$rendered" "$ROOT$rendered"
        elif [[ "$rendered" == "$INTERFACES" ]]; then
            rm -f "$ROOT$INTERFACES" # there was none: ours must not bring vmbr0 up at the next boot
        fi
    done
    rm -f "$ROOT$CLOUD_NETWORK_OFF"
    if [[ -n "$NETWORKD_STOPPED" ]]; then
        systemctl enable --now "${NETWORKD_UNITS[@]}" >&2 || true
        networkctl reload || true
    fi
    ip addr flush dev "$uplink" || true
    ip addr add "$NODE_IP/$NODE_PREFIX" dev "$uplink" || true
    ip route replace default via "$GATEWAY" dev "$uplink" || true
}

# Move the address from the NIC to the bridge without losing this SSH session.
switch_to_bridge() {
    local uplink="$1" output rc=0
    trap '' HUP # a dropped session must not stop this half-way
    log "moving $NODE_IP/$NODE_PREFIX from $uplink to $BRIDGE (ifreload -a)"
    stop_networkd
    ip addr flush dev "$uplink"
    output="$(ifreload -a 2>&1)" || rc=$?
    [[ -z "$output" ]] || printf '%s\n' "$output" >&2
    if ((rc != 0)) || ! bridge_is_up "$uplink"; then
        roll_back "$uplink"
        fail "could not move $NODE_IP to $BRIDGE (ifreload -a exit $rc${output:+: ${output//$'\n'/ }}); the previous configuration is back" \
            "Check /etc/network/interfaces against 'ip -br addr' on this node ($BACKUP_DIR holds cloud-init's files), then run this step again."
    fi
    trap - HUP
    log "$BRIDGE is up with $NODE_IP/$NODE_PREFIX on $uplink, default route via $GATEWAY"
}

main() {
    require_env
    local current uplink link1_nic=""
    current="$(link_with_address "$NODE_IP")"
    [[ -n "$current" ]] ||
        fail "no interface of this node has $NODE_IP ('ip -4 addr' shows its addresses)" \
            "NODE_IP must be this node's address; check the VM's cloud-init IP config on the outer host (qm cloudinit dump <vmid> network)."
    if [[ "$current" == "$BRIDGE" ]]; then
        uplink="$(bridge_port)"
        [[ -n "$uplink" ]] || fail "$BRIDGE holds $NODE_IP but has no port" "Add the node's NIC to $BRIDGE (bridge-ports in $INTERFACES), then run this step again."
    else
        uplink="$current"
    fi
    if [[ -n "${LINK1_IP:-}" ]]; then
        link1_nic="$(link_with_address "$LINK1_IP")"
        [[ -n "$link1_nic" ]] || fail "no interface of this node has LINK1_IP $LINK1_IP"
    fi
    write_configuration "$uplink" "$link1_nic"
    if [[ "$current" == "$BRIDGE" ]]; then
        stop_networkd
        log "$BRIDGE already holds $NODE_IP (port $uplink): nothing to move"
        if [[ -n "$INTERFACES_CHANGED" ]]; then
            # A changed gateway or link1 address on a bridged node: apply it (the address stays on vmbr0).
            ifreload -a >&2 || fail "ifreload -a failed after $INTERFACES changed" \
                "Check $INTERFACES and 'ip -br addr' on this node, then run this step again."
            log "applied the changed $INTERFACES"
        fi
    else
        switch_to_bridge "$uplink"
    fi
}

main "$@"
