#!/usr/bin/env bash
# qdevice-setup.sh - on the cluster nodes, for a QDevice (pve-cluster src/PVE/CLI/pvecm.pm setup_qdevice):
#   pubkey    (first node) print /root/.ssh/id_rsa.pub, the key `pvecm qdevice setup` logs in to QNetd with
#   packages  (every node) install corosync-qdevice (pvecm starts corosync-qdevice on every node)
#   setup     (first node) pin the QNetd host key, run `pvecm qdevice setup QNETD_ADDRESS` unless that QDevice
#             is already configured, and wait until `pvecm status` shows the Qdevice vote; print it on stdout.
# Environment (setup): QNETD_ADDRESS, QNETD_HOST_KEY ('ssh-ed25519 AAAA...'), EXPECTED_NODES.
# Optional: DEADLINE_S (600), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
COROSYNC_CONF="/etc/pve/corosync.conf"
ROOT_KEY="/root/.ssh/id_rsa"
KNOWN_HOSTS="/root/.ssh/known_hosts" # on PVE a link to /etc/pve/priv/known_hosts: shared by the cluster

print_pubkey() {
    [[ -s "$ROOT$ROOT_KEY" && -s "$ROOT$ROOT_KEY.pub" ]] ||
        fail "$ROOT_KEY(.pub) is missing: pvecm qdevice setup logs in to the QNetd host with it" \
            "Run 'pvecm updatecerts' on this node (it creates root's key), then this step again."
    cat "$ROOT$ROOT_KEY.pub"
}

install_qdevice() {
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' corosync-qdevice 2>/dev/null || true)" == "installed" ]]; then
        log "already installed: corosync-qdevice"
        return 0
    fi
    log "installing corosync-qdevice"
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o "DPkg::Lock::Timeout=${DEADLINE_S%.*}" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install corosync-qdevice >&2 ||
        fail "apt-get install corosync-qdevice failed (exit $?): see the apt messages above" \
            "Fix the node's package sources (apt-get update) and run this step again."
}

# The QNetd host of the configured QDevice (quorum { device { net { host: ... } } }), if any.
configured_qnetd() {
    [[ -f "$ROOT$COROSYNC_CONF" ]] || return 0
    awk '$1 == "device" && $2 == "{" { inside = 1 } inside && $1 == "host:" { print $2; exit }' "$ROOT$COROSYNC_CONF"
}

pin_host_key() {
    local file="$ROOT$KNOWN_HOSTS" line="$QNETD_ADDRESS $QNETD_HOST_KEY"
    if [[ -f "$file" ]] && grep -qxF -- "$line" "$file"; then
        return 0
    fi
    if [[ -f "$file" ]] && grep -q "^$QNETD_ADDRESS " "$file"; then
        fail "known_hosts already has another host key for $QNETD_ADDRESS" \
            "If the QDevice VM was re-created, remove the old line (ssh-keygen -R $QNETD_ADDRESS -f /etc/pve/priv/known_hosts) and run this step again."
    fi
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$line" >>"$file"
    log "pinned the QNetd host key of $QNETD_ADDRESS in $KNOWN_HOSTS"
}

wait_for_qdevice_vote() {
    local start=$SECONDS status rc
    while :; do
        rc=0
        status="$(bounded "$start" pvecm status 2>&1)" || rc=$?
        if ((rc == 0)) && grep -Eq '^Flags:.*Qdevice' <<<"$status" && grep -Eq '^Quorate: +Yes' <<<"$status"; then
            printf '%s\n' "$status"
            log "the QDevice at $QNETD_ADDRESS casts its vote"
            return 0
        fi
        if deadline_passed "$start"; then
            printf '%s\n' "$status" >&2
            fail "no Qdevice vote in 'pvecm status' within ${DEADLINE_S}s (exit $rc)" \
                "Check 'systemctl status corosync-qdevice' on the nodes and 'corosync-qnetd-tool -l' on the QDevice VM."
        fi
        sleep "$POLL_S"
    done
}

setup() {
    require_vars "Run as: QNETD_ADDRESS=10.10.10.13 QNETD_HOST_KEY='ssh-ed25519 AAAA...' EXPECTED_NODES=2 bash qdevice-setup.sh setup" \
        QNETD_ADDRESS QNETD_HOST_KEY EXPECTED_NODES
    require_ipv4 QNETD_ADDRESS
    require_seconds DEADLINE_S POLL_S
    [[ "$EXPECTED_NODES" =~ ^[0-9]*[02468]$ ]] ||
        fail "EXPECTED_NODES=$EXPECTED_NODES: a QDevice is for an even node count" "Set nodes.qdevice only with 2 or 4 nodes."
    [[ -f "$ROOT$COROSYNC_CONF" ]] ||
        fail "this node is in no cluster ($COROSYNC_CONF is missing)" "Create the cluster first."
    local current
    current="$(configured_qnetd)"
    if [[ "$current" == "$QNETD_ADDRESS" ]]; then
        log "QDevice $QNETD_ADDRESS is already configured"
    elif [[ -n "$current" ]]; then
        fail "another QDevice ($current) is configured" \
            "Remove it with 'pvecm qdevice remove' on a node if it is no longer used, then run this step again."
    else
        pin_host_key
        log "pvecm qdevice setup $QNETD_ADDRESS"
        pvecm qdevice setup "$QNETD_ADDRESS" >&2 ||
            fail "pvecm qdevice setup $QNETD_ADDRESS failed (exit $?): see its messages above" \
                "All nodes must be online and corosync-qnetd must run on $QNETD_ADDRESS; then run this step again."
    fi
    wait_for_qdevice_vote
}

main() {
    case "${1:-}" in
        pubkey) print_pubkey ;;
        packages) install_qdevice ;;
        setup) setup ;;
        *) fail "unknown mode '${1:-}'" "Run as: bash qdevice-setup.sh pubkey|packages|setup" ;;
    esac
}

main "$@"
