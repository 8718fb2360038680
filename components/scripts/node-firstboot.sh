#!/usr/bin/env bash
# node-firstboot.sh STEP - give a node cloned from the golden template its own identity, then prove it.
#   identity  after cloud-init's first boot: the clone's own host name (not the builder's), machine-id,
#             SSH host keys, mail name
#   pve       (after install-pve.sh prepare wrote /etc/hosts) pmxcfs up, a node certificate for this name
#             (`pvecm updatecerts --force` when missing or naming another host), pveproxy restarted with it
#   ready     checks only: the identity above, pveversion, the API on 8006; prints the pveversion line
# Environment (always): NODE_HOSTNAME, NODE_FQDN, NODE_IP. Optional: BUILDER_HOSTNAME (the template
#   builder's name: a clone still carrying it fails with a clear message), DEADLINE_S (600), POLL_S (5),
#   PVE_LAB_ROOT (file tree root, for tests).
# What a clone inherits and what replaces it: see node-seal.sh. Every step checks first: a second run changes nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
BUILDER_HOSTNAME="${BUILDER_HOSTNAME:-}"
MARKER="/etc/pve-lab/sealed"
API_URL="https://localhost:8006/"
# The PVE services that read /etc/pve (pve-manager, pve-ha-manager units), in the order they start at boot.
PVE_UNITS=(pvedaemon.service pveproxy.service spiceproxy.service pvestatd.service pve-firewall.service
    pvescheduler.service pve-ha-lrm.service pve-ha-crm.service)
REBUILD_HINT="The template was not sealed (or this VM is not a clone of it): rebuild the template (change its key or replace the builder), then re-create this node."

require_env() {
    require_vars "Run as: NODE_HOSTNAME=pve1 NODE_FQDN=pve1.lab.example NODE_IP=10.10.10.11 bash node-firstboot.sh STEP" \
        NODE_HOSTNAME NODE_FQDN NODE_IP
    require_ipv4 NODE_IP
    [[ "$NODE_FQDN" == "$NODE_HOSTNAME".* ]] ||
        fail "NODE_FQDN='$NODE_FQDN' must start with NODE_HOSTNAME followed by a dot ('$NODE_HOSTNAME.<domain>')"
    require_seconds DEADLINE_S POLL_S
}

# The builder's name: given, or from the seal marker the template carries.
builder_name() {
    if [[ -n "$BUILDER_HOSTNAME" ]]; then
        printf '%s\n' "$BUILDER_HOSTNAME"
    elif [[ -f "$ROOT$MARKER" ]]; then
        sed -n 's/^builder=//p' "$ROOT$MARKER"
    fi
}


check_not_builder() {
    local builder current
    builder="$(builder_name)"
    current="$(hostname)"
    if [[ -n "$builder" && "$current" == "$builder" ]]; then
        fail "this clone kept the template builder's identity: it is named '$builder', not '$NODE_HOSTNAME'" \
            "cloud-init did not give it its own name: check the VM's cloud-init drive (qm cloudinit dump <vmid> user), then re-create this node."
    fi
    require_hostname NODE_HOSTNAME "cloud-init should have named this clone: check its cloud-init drive, then re-create this node."
    if [[ -n "$builder" && -e "$ROOT/etc/pve/nodes/$builder" ]]; then
        fail "this clone kept the template builder's identity: /etc/pve/nodes/$builder (its node certificate) is still there" \
            "$REBUILD_HINT"
    fi
}

ensure_machine_id() {
    if [[ ! -s "$ROOT/etc/machine-id" ]] || grep -qx uninitialized "$ROOT/etc/machine-id"; then
        systemd-machine-id-setup >&2
        log "generated a machine-id"
    fi
}

host_keys_present() {
    compgen -G "$ROOT/etc/ssh/ssh_host_*_key" >/dev/null
}

ensure_host_keys() {
    if ! host_keys_present; then
        ssh-keygen -A >&2
        # Without host keys sshd failed at boot until systemd's start limit (Restart=on-failure): a restart is
        # refused until that is reset.
        systemctl reset-failed ssh.service
        systemctl restart ssh.service
        log "generated SSH host keys"
    fi
}

ensure_mail_name() {
    local mailname="$ROOT/etc/mailname" maincf="$ROOT/etc/postfix/main.cf"
    if [[ ! -f "$mailname" ]] || [[ "$(cat "$mailname")" != "$NODE_FQDN" ]]; then
        printf '%s\n' "$NODE_FQDN" >"$mailname"
        log "mail name is now $NODE_FQDN"
    fi
    if [[ -f "$maincf" ]] && grep -q '^myhostname *=' "$maincf" && ! grep -qx "myhostname = $NODE_FQDN" "$maincf"; then
        sed -i "s/^myhostname *=.*/myhostname = $NODE_FQDN/" "$maincf"
        if systemctl is-active --quiet postfix.service; then
            systemctl restart postfix.service
        fi
        log "postfix myhostname is now $NODE_FQDN"
    fi
}

step_identity() {
    wait_for_cloud_init "the clone $NODE_IP"
    check_not_builder
    ensure_machine_id
    ensure_host_keys
    ensure_mail_name
    log "identity done: $NODE_HOSTNAME has its own name, machine-id and SSH host keys"
}

# --- pve ---------------------------------------------------------------------------------------------

node_certificate() {
    printf '%s\n' "$ROOT/etc/pve/nodes/$NODE_HOSTNAME/pve-ssl.pem"
}

# Why the node certificate does not fit this node (nothing when it does).
certificate_problem() {
    local cert names
    cert="$(node_certificate)"
    [[ -f "$cert" ]] || {
        echo "no node certificate /etc/pve/nodes/$NODE_HOSTNAME/pve-ssl.pem"
        return 0
    }
    names="$(openssl x509 -noout -ext subjectAltName -in "$cert" 2>&1)" || {
        echo "cannot read /etc/pve/nodes/$NODE_HOSTNAME/pve-ssl.pem: ${names//$'\n'/ }"
        return 0
    }
    names="$(tr -d ' \n' <<<"$names" | sed 's/^.*Name://')"
    local builder
    builder="$(builder_name)"
    if [[ -n "$builder" ]] && grep -qE "(^|,)DNS:$builder(,|$)" <<<"$names"; then
        echo "this clone kept the template builder's identity: its node certificate is for $builder ($names)"
    elif ! grep -qE "(^|,)DNS:$NODE_HOSTNAME(,|$)" <<<"$names"; then
        echo "the node certificate names '$names', not DNS:$NODE_HOSTNAME"
    elif ! grep -qE "(^|,)IPAddress:$NODE_IP(,|$)" <<<"$names"; then
        echo "the node certificate does not name this node's address $NODE_IP ($names)"
    fi
}

wait_for_unit() {
    local unit="$1" start=$SECONDS
    until systemctl is-active --quiet "$unit"; do
        if deadline_passed "$start"; then
            fail "$unit is not active after ${DEADLINE_S}s on $NODE_HOSTNAME" \
                "Check 'journalctl -b -u $unit' on $NODE_HOSTNAME (does /etc/hosts map $NODE_HOSTNAME to $NODE_IP?), then run this step again."
        fi
        sleep "$POLL_S"
    done
}

step_pve() {
    check_not_builder
    # At boot pmxcfs may have failed: /etc/hosts did not name this node yet (install-pve.sh prepare fixes it).
    if ! systemctl is-active --quiet pve-cluster.service; then
        systemctl restart pve-cluster.service
        log "restarted pve-cluster (pmxcfs) with /etc/hosts in place"
    fi
    wait_for_unit pve-cluster.service
    local problem
    problem="$(certificate_problem)"
    if [[ -n "$problem" ]]; then
        log "$problem: making this node's certificate"
        pvecm updatecerts --force >&2
        problem="$(certificate_problem)"
        [[ -z "$problem" ]] || fail "after pvecm updatecerts --force: $problem" \
            "Check /etc/hosts and 'hostname' on $NODE_HOSTNAME, then run this step again."
        systemctl restart pveproxy.service
        log "pveproxy restarted with the certificate for $NODE_HOSTNAME"
    fi
    # Units that need pmxcfs failed at boot with it (HA's lrm and crm too): start every enabled one now.
    local unit
    for unit in "${PVE_UNITS[@]}"; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null && ! systemctl is-active --quiet "$unit"; then
            systemctl start "$unit"
            log "started $unit"
        fi
    done
    log "pve done: /etc/pve and the node certificate belong to $NODE_HOSTNAME"
}

# --- ready -------------------------------------------------------------------------------------------

step_ready() {
    check_not_builder
    [[ -s "$ROOT/etc/machine-id" ]] || fail "/etc/machine-id is empty on $NODE_HOSTNAME" "Run the identity step."
    host_keys_present || fail "no SSH host keys on $NODE_HOSTNAME" "Run the identity step."
    local problem
    problem="$(certificate_problem)"
    [[ -z "$problem" ]] || fail "$problem" "Run the pve step (it makes this node's certificate), or: $REBUILD_HINT"
    local start=$SECONDS version="" last_error="" api_error
    while :; do
        if ! version="$(pveversion 2>&1)"; then
            last_error="pveversion: ${version//$'\n'/ }"
        elif ! api_error="$(curl -ksS -o /dev/null --max-time 5 "$API_URL" 2>&1)"; then
            last_error="API $API_URL: ${api_error//$'\n'/ }"
        else
            printf '%s\n' "$version"
            log "ready: $version; web UI https://$NODE_IP:8006/ with a certificate for $NODE_HOSTNAME"
            return 0
        fi
        if deadline_passed "$start"; then
            fail "$NODE_HOSTNAME is not ready within ${DEADLINE_S}s; last error: $last_error" \
                "Run the pve step again, or check 'systemctl status pve-cluster pveproxy' on $NODE_HOSTNAME."
        fi
        sleep "$POLL_S"
    done
}

main() {
    local step="${1:-}"
    case "$step" in
        identity | pve | ready) ;;
        *) fail "unknown step '${step}'" "Usage: node-firstboot.sh identity|pve|ready" ;;
    esac
    require_env
    "step_$step"
}

main "$@"
