#!/usr/bin/env bash
# node-seal.sh - remove every trace of the builder's identity from an installed PVE node, then power it off,
# so that the outer host can turn it into the golden node template (components/node_template.py).
# Environment: NODE_HOSTNAME (the builder's name: sealing refuses to run anywhere else), NODE_IP,
#   TEMPLATE_KEY (recorded in the seal marker), POWEROFF_DELAY_S (5), PVE_LAB_ROOT (file tree root, for tests).
# What a clone must not inherit (pve-cluster src/PVE/Cluster/Setup.pm, pve-manager services/pveproxy.service):
#   - the pmxcfs database /var/lib/pve-cluster/config.db: it *is* /etc/pve, with the node directory
#     nodes/<builder>/ (pve-ssl.pem/.key), the cluster CA pve-root-ca.pem + priv/pve-root-ca.key, priv/authkey.key,
#     pve-www.key and the SSH known hosts. With no database pmxcfs starts an empty one, and pveproxy's
#     ExecStartPre `pvecm updatecerts --silent` makes a new CA and node certificate for the clone's own name;
#   - the SSH host keys, /etc/machine-id, cloud-init's instance state (cloud-init clean), root's authorized
#     keys (cloud-init writes the clone's), the builder's /etc/hosts line, apt lists and downloaded packages,
#     RRD data and task logs named after the builder.
# Never runs on a cluster member (/etc/corosync/corosync.conf or /etc/pve/corosync.conf present).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*

ROOT="${PVE_LAB_ROOT:-}"
POWEROFF_DELAY_S="${POWEROFF_DELAY_S:-5}"
POWEROFF_UNIT="pve-lab-poweroff"
MARKER="/etc/pve-lab/sealed"
# Stopped before the database goes: every one of them has the builder's name or certificate open.
PVE_SERVICES=(pve-ha-lrm.service pve-ha-crm.service pvescheduler.service pveproxy.service spiceproxy.service
    pvedaemon.service pvestatd.service pve-firewall.service pve-cluster.service)

require_env() {
    require_vars "Run as: NODE_HOSTNAME=pvelab-builder NODE_IP=10.10.10.14 TEMPLATE_KEY=<key> bash node-seal.sh" \
        NODE_HOSTNAME NODE_IP TEMPLATE_KEY
    require_ipv4 NODE_IP
    require_seconds POWEROFF_DELAY_S
    require_hostname NODE_HOSTNAME "Sealing erases this machine's PVE identity: run it only on the template builder."
}

refuse_cluster_member() {
    local conf
    for conf in /etc/corosync/corosync.conf /etc/pve/corosync.conf; do
        if [[ -e "$ROOT$conf" ]]; then
            fail "$NODE_HOSTNAME is a cluster member ($conf exists): not sealing it" \
                "Seal only a freshly installed builder; build a new template instead."
        fi
    done
}

stop_services() {
    local unit
    for unit in "${PVE_SERVICES[@]}"; do
        if systemctl is-active --quiet "$unit"; then
            systemctl stop "$unit"
            log "stopped $unit"
        fi
    done
    # Deleting under /etc/pve while pmxcfs still serves it would write through to the database.
    if systemctl is-active --quiet pve-cluster.service; then
        fail "pve-cluster.service is still active after the stop" "Look at 'systemctl status pve-cluster' on $NODE_HOSTNAME."
    fi
}

# remove PATH...: delete each path under ROOT that exists (globs expanded by the caller); logs what went.
remove() {
    local path
    for path in "$@"; do
        if [[ -e "$path" || -L "$path" ]]; then
            rm -rf -- "$path"
            log "removed ${path#"$ROOT"}"
        fi
    done
}

remove_pmxcfs_identity() {
    remove "$ROOT"/var/lib/pve-cluster/config.db "$ROOT"/var/lib/pve-cluster/config.db-wal \
        "$ROOT"/var/lib/pve-cluster/config.db-shm
    # With pmxcfs stopped /etc/pve is an empty mount point; anything left there is stale.
    if [[ -d "$ROOT/etc/pve" ]]; then
        local leftovers=()
        mapfile -t leftovers < <(find "$ROOT/etc/pve" -mindepth 1 -maxdepth 1)
        if ((${#leftovers[@]})); then
            remove "${leftovers[@]}"
        fi
    fi
}

remove_host_identity() {
    shopt -s nullglob
    remove "$ROOT"/etc/ssh/ssh_host_*
    remove "$ROOT"/root/.ssh/authorized_keys "$ROOT"/etc/ssh/ssh_known_hosts
    remove "$ROOT"/var/lib/rrdcached/db/pve2-node/"$NODE_HOSTNAME" "$ROOT"/var/lib/rrdcached/db/pve2-storage/"$NODE_HOSTNAME"
    remove "$ROOT"/var/log/pve/tasks/*
    remove "$ROOT"/var/lib/apt/lists/*_* "$ROOT"/var/cache/apt/archives/*.deb
    shopt -u nullglob
    # An empty machine-id (not a missing one) makes systemd generate a new one at the next boot.
    if [[ -s "$ROOT/etc/machine-id" ]]; then
        : >"$ROOT/etc/machine-id"
        log "emptied /etc/machine-id"
    fi
    remove "$ROOT/var/lib/dbus/machine-id"
    # The clone gets its own line (install-pve.sh prepare); cloud-init renders /etc/hosts from the template
    # at every boot (PVE's user-data says manage_etc_hosts: true), so the builder's line leaves both.
    strip_builder_lines /etc/hosts
    strip_builder_lines /etc/cloud/templates/hosts.debian.tmpl
}

# strip_builder_lines FILE: drop the lines that map the builder's address or name.
strip_builder_lines() {
    local file="$ROOT$1" kept
    [[ -f "$file" ]] || return 0
    kept="$(awk -v ip="$NODE_IP" -v host="$NODE_HOSTNAME" '
        $1 == ip { next }
        { for (i = 2; i <= NF; i++) if ($i == host || index($i, host ".") == 1) next; print }' "$file")"
    if [[ "$kept" != "$(cat "$file")" ]]; then
        printf '%s\n' "$kept" >"$file"
        log "removed $NODE_HOSTNAME from $1"
    fi
}

clean_cloud_init() {
    if [[ -d "$ROOT/var/lib/cloud/instance" || -d "$ROOT/var/lib/cloud/instances" ]]; then
        cloud-init clean --logs >&2
        log "cloud-init state cleaned: the clone's first boot is a new instance"
    fi
}

write_marker() {
    local want
    want="$(printf '%s\n' "builder=$NODE_HOSTNAME" "key=$TEMPLATE_KEY")"
    [[ -f "$ROOT$MARKER" && "$(cat "$ROOT$MARKER")" == "$want" ]] && return 0
    mkdir -p "$(dirname "$ROOT$MARKER")"
    printf '%s\n' "builder=$NODE_HOSTNAME" "key=$TEMPLATE_KEY" >"$ROOT$MARKER.tmp"
    mv -f "$ROOT$MARKER.tmp" "$ROOT$MARKER"
}

schedule_poweroff() {
    if systemctl is-active --quiet "$POWEROFF_UNIT.timer"; then
        log "power-off already scheduled ($POWEROFF_UNIT.timer)"
        return 0
    fi
    sync
    # A timer fires up to AccuracySec (1 min by default) late: ask for the delay as given.
    systemd-run --on-active="$POWEROFF_DELAY_S" --timer-property=AccuracySec=1s --unit="$POWEROFF_UNIT" \
        --description="pve-lab: power off the sealed template builder" systemctl poweroff ||
        fail "could not schedule the power-off (systemd-run failed)" "Power $NODE_HOSTNAME off by hand; the outer host then makes it a template."
    log "sealed; powering off in ${POWEROFF_DELAY_S}s"
}

main() {
    require_env
    refuse_cluster_member
    stop_services
    remove_pmxcfs_identity
    remove_host_identity
    clean_cloud_init
    write_marker
    schedule_poweroff
}

main "$@"
