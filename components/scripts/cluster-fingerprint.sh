#!/usr/bin/env bash
# cluster-fingerprint.sh - print this node's API certificate SHA-256 fingerprint (AA:BB:..., 32 pairs) on stdout,
# the value `pvecm add --fingerprint` pins on the joining nodes. Read from the cluster's join information
# (`pvesh get /cluster/config/join`, the node's pve_fp): the certificate pveproxy really serves.
# Optional environment: DEADLINE_S (60), POLL_S (2).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

DEADLINE_S="${DEADLINE_S:-60}"
POLL_S="${POLL_S:-2}"

# The pve_fp of node $NODE_NAME in the join information (JSON on stdin). Perl and JSON::PP ship with PVE.
fingerprint_from_join_info() {
    perl -MJSON::PP -0777 -ne '
        my $info = decode_json($_);
        print "$_->{pve_fp}\n" for grep { $_->{name} eq $ENV{NODE_NAME} } @{ $info->{nodelist} || [] };'
}

main() {
    require_seconds DEADLINE_S POLL_S
    local node start=$SECONDS join_info="" errors=""
    node="$(uname -n)"
    node="${node%%.*}" # the PVE node name: the host name up to the first dot
    # Right after the create, pmxcfs may still be restarting: poll until the API answers. Only stdout is
    # JSON: pvesh's warnings on stderr are logged, never parsed.
    # Each call is bounded too: pvesh waits as long as pmxcfs does.
    until split_output join_info errors bounded "$start" pvesh get /cluster/config/join --output-format json; do
        if deadline_passed "$start"; then
            fail "no join information from 'pvesh get /cluster/config/join' within ${DEADLINE_S}s: ${errors//$'\n'/ }" \
                "Is this node the cluster's first node, with the cluster created ('pvecm status')? Then run this step again."
        fi
        sleep "$POLL_S"
    done
    if [[ -n "$errors" ]]; then
        log "pvesh said on stderr: ${errors//$'\n'/ }"
    fi
    local fingerprint
    fingerprint="$(NODE_NAME="$node" fingerprint_from_join_info <<<"$join_info")" ||
        fail "could not read the join information of node '$node' (not JSON?): ${join_info:0:200}"
    fingerprint="${fingerprint^^}"
    [[ "$fingerprint" =~ ^([0-9A-F]{2}:){31}[0-9A-F]{2}$ ]] ||
        fail "node '$node' has no valid certificate fingerprint in the join information (got '${fingerprint//$'\n'/ }')" \
            "Check 'pvenode cert info' on this node; 'pvecm updatecerts' regenerates missing certificates."
    printf '%s\n' "$fingerprint"
    log "API certificate fingerprint of $node: $fingerprint"
}

main "$@"
