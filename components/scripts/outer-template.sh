#!/usr/bin/env bash
# outer-template.sh - turn the sealed template builder into a template through the outer host's API.
# Runs where pulumi runs (a local command), not on a node: waits until the builder has powered itself off
# (node-seal.sh schedules that), then POST /nodes/{node}/qemu/{vmid}/template and waits for the task
# (qemu-server PVE/API2/Qemu.pm `template`: the VM must be stopped; its disks become base volumes).
# Environment: PVE_ENDPOINT (https://host:8006/), PVE_NODE, VMID, PVE_API_TOKEN (user@realm!id=uuid, a
#   secret: it only ever goes to curl on stdin), PVE_INSECURE (true|false), PVE_CA_FILE (a CA to verify
#   the host with instead of the system's), DEADLINE_S (600), POLL_S (5).
# Does nothing when the VM is already a template. Prints the VMID.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"

require_env() {
    require_vars "Run as: PVE_ENDPOINT=https://pve:8006/ PVE_NODE=pve VMID=9199 PVE_API_TOKEN=... bash outer-template.sh" \
        PVE_ENDPOINT PVE_NODE VMID PVE_API_TOKEN
    [[ "$VMID" =~ ^[0-9]+$ ]] || fail "VMID='$VMID' is not a VM id"
    [[ "$PVE_ENDPOINT" =~ ^https:// ]] || fail "PVE_ENDPOINT='$PVE_ENDPOINT' is not an https:// URL"
    require_seconds DEADLINE_S POLL_S
}

# api METHOD PATH: the response body on stdout; the token goes to curl as a header file on stdin.
api() {
    local method="$1" path="$2" tls=()
    if [[ "${PVE_INSECURE:-false}" == "true" ]]; then
        tls=(-k)
    elif [[ -n "${PVE_CA_FILE:-}" ]]; then
        tls=(--cacert "$PVE_CA_FILE")
    fi
    printf 'Authorization: PVEAPIToken=%s\n' "$PVE_API_TOKEN" |
        curl -sS -f "${tls[@]}" --max-time 30 -X "$method" -H @- "${PVE_ENDPOINT%/}/api2/json$path"
}

vm_path() { printf '/nodes/%s/qemu/%s' "$PVE_NODE" "$VMID"; }

# field NAME < json: a scalar field of PVE's JSON answer (no jq needed on the pulumi machine).
field() {
    grep -oE "\"$1\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[^,}[:space:]]*)" | head -n1 |
        sed -E "s/^\"$1\"[[:space:]]*:[[:space:]]*//; s/^\"(.*)\"$/\1/"
}

vm_status() {
    local body
    body="$(api GET "$(vm_path)/status/current")" || fail "cannot read VM $VMID on $PVE_NODE through $PVE_ENDPOINT" \
        "Check the endpoint, the token's VM.Audit privilege, and that VM $VMID exists."
    printf '%s\n' "$body"
}

wait_stopped() {
    local start=$SECONDS status
    while :; do
        status="$(vm_status | field status)"
        [[ "$status" == "stopped" ]] && return 0
        if deadline_passed "$start"; then
            fail "the builder VM $VMID is still '$status' ${DEADLINE_S}s after sealing: it did not power off" \
                "Look at its console on $PVE_NODE; stop it by hand (qm stop $VMID) and run pulumi up again."
        fi
        sleep "$POLL_S"
    done
}

wait_task() {
    local upid="$1" start=$SECONDS body status exitstatus encoded
    encoded="$(sed 's/:/%3A/g; s/@/%40/g; s/!/%21/g' <<<"$upid")"
    while :; do
        body="$(api GET "/nodes/$PVE_NODE/tasks/$encoded/status")" || fail "cannot read task $upid"
        status="$(field status <<<"$body")"
        if [[ "$status" == "stopped" ]]; then
            exitstatus="$(field exitstatus <<<"$body")"
            [[ "$exitstatus" == "OK" ]] || fail "converting VM $VMID to a template failed: $exitstatus" \
                "See the task log on $PVE_NODE (Datacenter > Tasks)."
            return 0
        fi
        if deadline_passed "$start"; then
            fail "converting VM $VMID to a template did not finish within ${DEADLINE_S}s (task $upid)"
        fi
        sleep "$POLL_S"
    done
}

main() {
    require_env
    if [[ "$(vm_status | field template)" == "1" ]]; then
        log "VM $VMID is already a template"
        printf '%s\n' "$VMID"
        return 0
    fi
    wait_stopped
    local body upid
    body="$(api POST "$(vm_path)/template")" || fail "the outer host refused to convert VM $VMID to a template" \
        "The token needs VM.Allocate on the VM; the VM must be stopped."
    upid="$(field data <<<"$body")"
    if [[ "$upid" == UPID:* ]]; then
        wait_task "$upid"
    fi
    [[ "$(vm_status | field template)" == "1" ]] || fail "VM $VMID is not a template after the conversion"
    log "VM $VMID is now the golden node template"
    printf '%s\n' "$VMID"
}

main "$@"
