#!/usr/bin/env bash
# qdevice-qnetd.sh - on the QDevice VM (plain Debian): install and run corosync-qnetd, authorize the first
# cluster node's root key (`pvecm qdevice setup` logs in with it: ssh-copy-id, then ssh/scp in BatchMode),
# and print this host's SSH host key on stdout (the setup step pins it in the cluster's known_hosts).
# Environment: AUTHORIZED_KEY (the first node's /root/.ssh/id_rsa.pub).
# Optional: DEADLINE_S (1800), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
DEADLINE_S="${DEADLINE_S:-1800}"
POLL_S="${POLL_S:-5}"
AUTH_KEYS="/root/.ssh/authorized_keys"
HOST_KEY="/etc/ssh/ssh_host_ed25519_key.pub"


package_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -y -q -o "DPkg::Lock::Timeout=${DEADLINE_S%.*}" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >&2 ||
        fail "apt-get $1 failed (exit $?): see the apt messages above" \
            "Check the QDevice VM's network and Debian mirror, then run this step again."
}

ensure_qnetd() {
    if package_installed corosync-qnetd; then
        log "already installed: corosync-qnetd"
    else
        log "installing corosync-qnetd"
        apt_get update
        apt_get install corosync-qnetd
    fi
    systemctl is-enabled --quiet corosync-qnetd.service 2>/dev/null || systemctl enable corosync-qnetd.service
    systemctl is-active --quiet corosync-qnetd.service || systemctl start corosync-qnetd.service
    systemctl is-active --quiet corosync-qnetd.service ||
        fail "corosync-qnetd.service does not run" "See 'journalctl -u corosync-qnetd' on the QDevice VM."
}

authorize_key() {
    local file="$ROOT$AUTH_KEYS"
    if [[ -f "$file" ]] && grep -qxF -- "$AUTHORIZED_KEY" "$file"; then
        log "the first node's key is already authorized"
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    chmod 700 "$(dirname "$file")"
    printf '%s\n' "$AUTHORIZED_KEY" >>"$file"
    chmod 600 "$file"
    log "authorized the first node's root key in $AUTH_KEYS"
}

main() {
    require_vars "Run as: AUTHORIZED_KEY='ssh-rsa AAAA... root@pve1' bash qdevice-qnetd.sh" AUTHORIZED_KEY
    require_seconds DEADLINE_S POLL_S
    [[ "$AUTHORIZED_KEY" =~ ^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp[0-9]+)\ [A-Za-z0-9+/=]+(\ .*)?$ ]] ||
        fail "AUTHORIZED_KEY is not an OpenSSH public key line" "Pass the first node's /root/.ssh/id_rsa.pub."
    wait_for_cloud_init "the QDevice VM"
    ensure_qnetd
    authorize_key
    [[ -s "$ROOT$HOST_KEY" ]] || fail "$HOST_KEY is missing" "Check sshd on the QDevice VM (ssh-keygen -A)."
    cut -d' ' -f1,2 "$ROOT$HOST_KEY"
}

main "$@"
