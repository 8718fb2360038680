#!/usr/bin/env bash
# cluster-join.sh - join this node to the cluster of the first node (`pvecm add` over the API), then wait until
# the cluster is quorate with EXPECTED_NODES members. Run on one node at a time.
# Environment: CLUSTER_NAME, FIRST_IP (a member's address), LINK0 (this node's corosync address),
#   FINGERPRINT (the member's API certificate SHA-256), EXPECTED_NODES (members once this node is in).
# Optional: LINK1 (second corosync link), DEADLINE_S (600), POLL_S (5), PVE_LAB_ROOT (file tree root, for tests).
# Stdin: the first node's root password, as the first line (never an argument or a variable: `ps` would show it).
# Already a member of CLUSTER_NAME: nothing to join. In a cluster of another name: fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
COROSYNC_CONF="/etc/pve/corosync.conf"
LOCAL_COROSYNC_CONF="/etc/corosync/corosync.conf"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
LINK0="${LINK0:-}"
LINK1="${LINK1:-}"

require_env() {
    require_vars "Run as: CLUSTER_NAME=pve-lab FIRST_IP=10.10.10.11 LINK0=10.10.10.12 FINGERPRINT=AA:BB:... EXPECTED_NODES=2 bash cluster-join.sh <<<\"\$ROOT_PASSWORD\"" \
        CLUSTER_NAME FIRST_IP LINK0 FINGERPRINT EXPECTED_NODES
    [[ "$CLUSTER_NAME" =~ ^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$ ]] ||
        fail "CLUSTER_NAME='$CLUSTER_NAME' is not allowed: 1-15 lower-case letters, digits and '-', starting with a letter, not ending in '-' (pve-common JSONSchema.pm pve_verify_node_name)"
    require_ipv4 FIRST_IP LINK0 LINK1
    [[ "$FINGERPRINT" =~ ^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$ ]] ||
        fail "FINGERPRINT='$FINGERPRINT' is not a SHA-256 fingerprint (32 hex pairs joined by ':')" \
            "Take it from cluster-fingerprint.sh on the first node."
    [[ "$EXPECTED_NODES" =~ ^[1-9][0-9]*$ ]] || fail "EXPECTED_NODES='$EXPECTED_NODES' must be a whole number of nodes"
    require_seconds DEADLINE_S POLL_S
}

# The cluster this node's corosync.conf belongs to; empty when it is in no cluster.
current_cluster() {
    local conf="$ROOT$COROSYNC_CONF" name
    [[ -f "$conf" ]] || return 0
    name="$(awk '$1 == "cluster_name:" { print $2; exit }' "$conf")"
    printf '%s\n' "${name:-(no cluster_name in $COROSYNC_CONF)}"
}

# True when corosync.conf says: cluster CLUSTER_NAME, with this node in its node list.
is_member() {
    local conf="$ROOT$COROSYNC_CONF"
    [[ "$(current_cluster)" == "$CLUSTER_NAME" ]] && awk -v me="$NODE" '$1 == "name:" && $2 == me { found = 1 } END { exit !found }' "$conf"
}

# One `pvecm add` attempt, killed at the step's deadline; its messages go to stderr and into $join_output.
# pvecm add exits 0 even when its task failed (the bare error is its last line): membership decides.
try_join() {
    local start="$1" links=(--link0 "$LINK0") rc=0
    if [[ -n "${LINK1:-}" ]]; then
        links+=(--link1 "$LINK1")
    fi
    # The password reaches pvecm on its stdin only (printf is a shell builtin: no process shows it).
    join_output="$(printf '%s\n' "$ROOT_PASSWORD" |
        bounded "$start" pvecm add "$FIRST_IP" "${links[@]}" --fingerprint "$FINGERPRINT" 2>&1)" || rc=$?
    printf '%s\n' "$join_output" >&2
    return "$rc"
}

# pvecm add was killed at the deadline. After "Join request OK" the member has added this node, and
# pvecm add was waiting for quorum (Setup.pm finish_join has no deadline): corosync did not get through.
fail_join_timed_out() {
    if [[ "$join_output" == *"Join request OK"* ]]; then
        fail "pvecm add was stopped after ${DEADLINE_S}s: $FIRST_IP added $NODE to cluster '$CLUSTER_NAME', but $NODE never reached quorum (corosync traffic between the link addresses does not pass); while this lasts the cluster counts $NODE's missing vote" \
            "Let corosync through (UDP 5405-5412 between $LINK0${LINK1:+/$LINK1} and the other nodes; 'journalctl -u corosync' on $NODE). Once 'pvecm status' on $NODE is quorate, finish the join there with 'pvecm updatecerts --force' and run this step again. To give up instead: 'pvecm delnode $NODE' on $FIRST_IP and re-create $NODE."
    fi
    fail "pvecm add did not finish within ${DEADLINE_S}s and was stopped before $FIRST_IP accepted $NODE (its messages are above)" \
        "Check that https://$FIRST_IP:8006 answers from $NODE and 'pvecm status' on $FIRST_IP, then run this step again."
}

# pvecm add over the API, retried on transient failures until the deadline; permanent ones fail at once.
join_cluster() {
    local start=$SECONDS rc reason
    while :; do
        rc=0
        try_join "$start" || rc=$?
        # pvecm add can exit 0 although its task failed: only membership counts.
        if is_member; then
            return 0
        fi
        if timed_out "$rc"; then
            fail_join_timed_out
        fi
        case "$join_output" in
            *"401 authentication failure"*)
                fail "the first node ($FIRST_IP) rejected the root password (401 authentication failure)" \
                    "The password on stdin must be the first node's root password ('pulumi stack output --show-secrets rootPassword'); if it was changed on the node, set pve-lab:rootPassword to it, then run again." ;;
            *"not verified, abort"*)
                fail "the API certificate of $FIRST_IP does not have the fingerprint $FINGERPRINT" \
                    "Check that FIRST_IP is the first node; if its certificate changed, re-run the fingerprint step (pulumi up --replace <URN of the *-cluster-fingerprint resource>), then this join." ;;
            *"Check if node may join a cluster failed"*)
                fail "pvecm refused to join this node ($NODE): see 'detected the following error(s)' above" \
                    "A joining node must have no guests, no corosync authkey or corosync.conf from an earlier cluster and its link addresses configured; fix that (or re-create this node) and run again." ;;
            *"got lock request timeout"* | *"no quorum"*)
                reason="the cluster was locked or not quorate (another join running, or corosync still settling)" ;;
            *"can't lock file '/var/lock/pvecm.lock' - got timeout"*)
                # The member's (or this node's) local cluster lock: another cluster change is running there.
                reason="/var/lock/pvecm.lock was held by another cluster operation (on $FIRST_IP, or here)" ;;
            *"Can't connect to $FIRST_IP:8006"*)
                reason="the first node's API https://$FIRST_IP:8006 did not accept the connection. The join uses that API (pinned with the fingerprint), not SSH (--use_ssh): pveproxy must run on $FIRST_IP and port 8006 must be reachable from $NODE" ;;
            *)
                fail "pvecm add exited $rc, but $NODE is not a member of cluster '$CLUSTER_NAME' afterwards (its messages are above)" \
                    "Fix the cause shown by pvecm (see also 'journalctl -u pve-cluster -u corosync' here and on $FIRST_IP), then run again." ;;
        esac
        if deadline_passed "$start"; then
            fail "could not join cluster '$CLUSTER_NAME' within ${DEADLINE_S}s: $reason" \
                "Check 'pvecm status' on $FIRST_IP and 'systemctl status pveproxy' there, then run this step again."
        fi
        log "join not possible yet ($reason); retrying in ${POLL_S}s"
        sleep "$POLL_S"
    done
}

# Poll `pvecm status` until quorate (exit 0) with at least EXPECTED_NODES nodes online.
wait_for_quorum() {
    local start=$SECONDS status rc online
    while :; do
        rc=0
        status="$(bounded "$start" pvecm status 2>&1)" || rc=$?
        online="$(awk -F': *' '$1 == "Nodes" { print $2; exit }' <<<"$status")"
        if ((rc == 0)) && [[ "$online" =~ ^[0-9]+$ ]] && ((online >= EXPECTED_NODES)); then
            log "cluster '$CLUSTER_NAME' is quorate with $online nodes"
            return 0
        fi
        if deadline_passed "$start"; then
            log "last 'pvecm status' (exit $rc):"
            printf '%s\n' "$status" >&2
            fail "cluster '$CLUSTER_NAME' was not quorate with $EXPECTED_NODES nodes within ${DEADLINE_S}s of this join" \
                "Check that every node is up and 'journalctl -u corosync' on $NODE for link errors, then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main() {
    ROOT_PASSWORD=""
    IFS= read -r ROOT_PASSWORD || true
    require_env
    # pvecm add refuses to run inside /etc/pve (pmxcfs restarts under it).
    cd /
    # The PVE node name: the host name up to the first dot.
    NODE="$(uname -n)"
    NODE="${NODE%%.*}"
    local current
    current="$(current_cluster)"
    if is_member; then
        log "$NODE is already a member of cluster '$CLUSTER_NAME': nothing to join"
    elif [[ "$current" == "$CLUSTER_NAME" ]]; then
        fail "$NODE has the $COROSYNC_CONF of cluster '$CLUSTER_NAME' but is not in its node list (a half-done join?)" \
            "Compare 'pvecm nodes' here and on $FIRST_IP; re-create this node if the join was left half done."
    elif [[ -n "$current" ]]; then
        fail "$NODE is already in cluster '$current' (its $COROSYNC_CONF), not in '$CLUSTER_NAME'" \
            "A node belongs to one cluster only: re-create this node (pulumi destroy, then pulumi up), or set pve-lab:lab.cluster.name to '$current' if that cluster is this lab's."
    elif [[ -f "$ROOT$LOCAL_COROSYNC_CONF" ]]; then
        # pvecm add wrote the local corosync files, then stopped before quorum (Setup.pm finish_join).
        fail "$NODE has $LOCAL_COROSYNC_CONF but no $COROSYNC_CONF: an earlier join was stopped while it waited for quorum" \
            "Check 'pvecm status' and 'journalctl -u corosync' on $NODE: once corosync reaches the other nodes the cluster syncs /etc/pve; then 'pvecm updatecerts --force' on $NODE and run this step again. To give up: 'pvecm delnode $NODE' on $FIRST_IP and re-create $NODE."
    else
        [[ -n "$ROOT_PASSWORD" ]] ||
            fail "no root password on stdin (the first line must be the first node's root password)" \
                "Run as: bash cluster-join.sh <<<\"\$ROOT_PASSWORD\" (pulumi sends it on stdin)."
        log "joining cluster '$CLUSTER_NAME' through $FIRST_IP (link0 $LINK0${LINK1:+, link1 $LINK1})"
        join_cluster
        log "$NODE joined cluster '$CLUSTER_NAME'"
    fi
    ROOT_PASSWORD=""
    wait_for_quorum
}

main "$@"
