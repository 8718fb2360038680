#!/usr/bin/env bash
# ceph-init.sh - write the cluster's Ceph configuration once (`pveceph init`), on the first node.
# Environment: CEPH_NETWORK (public network CIDR), CEPH_CLUSTER_NETWORK (optional, OSD replication CIDR),
#   NODE_NAME (for messages). Optional: DEADLINE_S (300), after which `pveceph init` is stopped.
# Skips when /etc/pve/ceph.conf already has an fsid; fails when that configuration uses other networks.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

CONF="${PVE_LAB_ROOT:-}/etc/pve/ceph.conf"
CIDR_RE='^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$'
DEADLINE_S="${DEADLINE_S:-300}"
START=$SECONDS

require_env() {
    [[ -n "${NODE_NAME:-}" ]] || fail "missing environment variable NODE_NAME"
    [[ "${CEPH_NETWORK:-}" =~ $CIDR_RE ]] || fail "CEPH_NETWORK='${CEPH_NETWORK:-}' is not an IPv4 CIDR (e.g. 10.10.10.0/24)"
    if [[ -n "${CEPH_CLUSTER_NETWORK:-}" && ! "$CEPH_CLUSTER_NETWORK" =~ $CIDR_RE ]]; then
        fail "CEPH_CLUSTER_NETWORK='$CEPH_CLUSTER_NETWORK' is not an IPv4 CIDR (e.g. 10.10.20.0/24)"
    fi
    require_seconds DEADLINE_S
}

# conf_value KEY: KEY's value in the [global] section ("public network" and "public_network" are one key).
conf_value() {
    [[ -f "$CONF" ]] || return 0
    awk -v want="$1" '
        /^[[:space:]]*\[/ { section = $0; sub(/^[[:space:]]*\[/, "", section); sub(/\].*/, "", section); next }
        section == "global" && index($0, "=") {
            key = substr($0, 1, index($0, "=") - 1); value = substr($0, index($0, "=") + 1)
            gsub(/^[[:space:]]+|[[:space:]]+$/, "", key); gsub(/[[:space:]]+/, "_", key)
            gsub(/^[[:space:]]+|[[:space:]]+$/, "", value)
            if (key == want) print value
        }' "$CONF"
}

# An existing Ceph keeps its networks: monitors and OSDs cannot move by a config change.
check_networks() {
    local fsid="$1" public cluster wanted_cluster="${CEPH_CLUSTER_NETWORK:-$CEPH_NETWORK}"
    public="$(conf_value public_network)"
    cluster="$(conf_value cluster_network)"
    [[ "$public" == "$CEPH_NETWORK" ]] ||
        fail "Ceph (fsid $fsid in /etc/pve/ceph.conf) uses public network '${public:-none}', but ceph.network is '$CEPH_NETWORK'" \
            "Set ceph.network to '${public:-its network}' (leave it out if that is the lab network), or destroy and re-create the lab to change it."
    [[ "${cluster:-$public}" == "$wanted_cluster" ]] ||
        fail "Ceph (fsid $fsid in /etc/pve/ceph.conf) uses cluster network '${cluster:-$public}', but this lab asks for '$wanted_cluster'" \
            "Set ceph.clusterNetwork to match the built cluster, or destroy and re-create the lab to change it."
}

main() {
    require_env
    local fsid args=(init --network "$CEPH_NETWORK") rc=0
    fsid="$(conf_value fsid)"
    if [[ -n "$fsid" ]]; then
        check_networks "$fsid"
        log "Ceph is already initialized (fsid $fsid, public network $CEPH_NETWORK)"
        return 0
    fi
    if [[ -n "${CEPH_CLUSTER_NETWORK:-}" ]]; then
        args+=(--cluster-network "$CEPH_CLUSTER_NETWORK")
    fi
    log "initializing Ceph on $NODE_NAME: pveceph ${args[*]}"
    bounded "$START" pveceph "${args[@]}" >&2 || rc=$?
    if timed_out "$rc"; then
        fail "pveceph ${args[*]} did not finish within ${DEADLINE_S}s on $NODE_NAME and was stopped" \
            "Check 'pvecm status' (pmxcfs needs quorum to write /etc/pve) and 'ls /etc/pve/ceph.conf', then run this step again."
    fi
    ((rc == 0)) ||
        fail "pveceph ${args[*]} failed on $NODE_NAME (exit $rc): see its messages above" \
            "Check 'pvecm status' (pmxcfs needs quorum to write /etc/pve), then run this step again."
    # pveceph init can exit 0 although it failed: believe the file, not the exit code.
    fsid="$(conf_value fsid)"
    [[ -n "$fsid" ]] ||
        fail "pveceph init exited 0, but /etc/pve/ceph.conf has no fsid: the initialization failed (see its messages above)" \
            "Check 'pvecm status' and that /etc/pve is writable on $NODE_NAME, then run this step again."
    check_networks "$fsid"
    log "Ceph initialized: fsid $fsid, public network $CEPH_NETWORK"
}

main "$@"
