#!/usr/bin/env bash
# ceph-install.sh - install the Ceph packages of one release on this node (`pveceph install`), unattended.
# Environment: CEPH_RELEASE (squid|tentacle on PVE 9), CEPH_REPOSITORY (no-subscription|enterprise|test),
#   NODE_NAME (for messages). Optional: DEADLINE_S (1800), after which `pveceph install` is stopped.
# Skips when the release's daemons are installed. Prints the `ceph --version` line.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

DEADLINE_S="${DEADLINE_S:-1800}"
START=$SECONDS
# Where apt output goes, as in install-pve.sh (README "Day two": the step shows the tail and the path).
APT_LOG=/var/log/pve-lab/apt.log

require_env() {
    [[ -n "${NODE_NAME:-}" ]] || fail "missing environment variable NODE_NAME"
    [[ "${CEPH_RELEASE:-}" =~ ^[a-z]+$ ]] ||
        fail "CEPH_RELEASE='${CEPH_RELEASE:-}' is not a Ceph release code name (squid or tentacle on PVE 9)"
    case "${CEPH_REPOSITORY:-}" in
        no-subscription | enterprise | test) ;;
        *) fail "CEPH_REPOSITORY='${CEPH_REPOSITORY:-}' (allowed: no-subscription, enterprise, test)" ;;
    esac
    require_seconds DEADLINE_S
}

# True when ceph-mon, ceph-osd and ceph-mgr are all installed. PVE ships the `ceph` client (ceph-common)
# by default, so `ceph --version` alone says nothing about the daemons.
daemons_installed() {
    local count
    count="$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' ceph-mon ceph-osd ceph-mgr 2>/dev/null |
        awk '$1 == "installed"' | wc -l)" || true
    ((count == 3))
}

# The release named by `ceph --version` ("ceph version 19.2.3 (...) squid (stable)"), or nothing.
client_release() {
    ceph --version 2>/dev/null | sed -n 's/^ceph version [^ ]* ([^)]*) \([a-z]*\) .*/\1/p' || true
}

main() {
    require_env
    local installed rc=0
    if daemons_installed; then
        installed="$(client_release)"
        if [[ "$installed" == "$CEPH_RELEASE" ]]; then
            log "Ceph $CEPH_RELEASE is already installed on $NODE_NAME"
            ceph --version
            return 0
        fi
        fail "Ceph '${installed:-unknown}' is installed on $NODE_NAME, but ceph.release is '$CEPH_RELEASE'" \
            "Changing the release of a built Ceph cluster is an upgrade (Proxmox's Ceph upgrade guide), not a lab setting: set ceph.release back to '${installed:-the installed release}', or destroy and re-create the lab."
    fi
    # pveceph runs `apt-get install` without -y: answer yes for this run only, through a private apt config
    # (nothing is left in /etc/apt). The lock timeout waits out a daily apt job instead of failing.
    local args=(install --repository "$CEPH_REPOSITORY" --version "$CEPH_RELEASE")
    APT_ANSWERS="$(mktemp)"
    trap 'rm -f "$APT_ANSWERS"' EXIT
    printf '%s\n' 'APT::Get::Assume-Yes "true";' 'DPkg::Lock::Timeout "300";' >"$APT_ANSWERS"
    # tentacle is a tech preview in pve-manager 9.1.5 to 9.1.12 (pveceph refuses it off a terminal without
    # this flag); from 9.1.13 it is the default and the flag changes nothing; before 9.1.5 there is no tentacle
    # (pve-manager PVE/Ceph/Releases.pm, debian/changelog).
    if [[ "$CEPH_RELEASE" == tentacle ]]; then
        args+=(--allow-experimental 1)
    fi
    log "installing Ceph $CEPH_RELEASE from the $CEPH_REPOSITORY repository on $NODE_NAME: pveceph ${args[*]} (its output: $APT_LOG)"
    local output
    output="$(APT_CONFIG="$APT_ANSWERS" bounded "$START" pveceph "${args[@]}" </dev/null 2>&1)" || rc=$?
    # apt's progress stays out of the step's output (the Pulumi state keeps it): it goes to the node's apt log,
    # the step shows its last lines when something went wrong.
    mkdir -p "${PVE_LAB_ROOT:-}${APT_LOG%/*}"
    printf '%s\n' "$output" >>"${PVE_LAB_ROOT:-}$APT_LOG"
    if ((rc != 0)); then
        tail -n 15 <<<"$output" >&2
    else
        grep -E '^(NOTE|WARN|WARNING):' <<<"$output" >&2 || true # e.g. the tech-preview note
    fi
    if timed_out "$rc"; then
        fail "pveceph ${args[*]} did not finish within ${DEADLINE_S}s on $NODE_NAME and was stopped" \
            "Check that $NODE_NAME reaches the Ceph repository and that no other apt/dpkg run holds its lock ('ps -C apt-get,dpkg'); 'dpkg --configure -a' repairs an interrupted install. Then run this step again."
    fi
    if [[ "$output" == *"version: value '$CEPH_RELEASE' does not have a value in the enumeration"* ]]; then
        fail "this node's pve-manager does not offer Ceph $CEPH_RELEASE (pveceph offers: ${output##*enumeration })" \
            "Ceph tentacle needs pve-manager 9.1.5 or later ('pveversion'; 'apt full-upgrade' updates it), or set ceph.release to squid."
    fi
    ((rc == 0)) ||
        fail "pveceph ${args[*]} failed on $NODE_NAME (exit $rc): its last lines are above" \
            "Check that $NODE_NAME reaches the Ceph repository (the enterprise one needs a subscription); all of pveceph's output is in $APT_LOG there. Then run this step again."
    if ! daemons_installed || [[ "$(client_release)" != "$CEPH_RELEASE" ]]; then
        fail "pveceph install exited 0, but ceph-mon/ceph-osd/ceph-mgr $CEPH_RELEASE are not installed on $NODE_NAME ($(ceph --version 2>&1 || true))" \
            "Run 'pveceph install --repository $CEPH_REPOSITORY --version $CEPH_RELEASE' on $NODE_NAME to see why, then run this step again."
    fi
    log "Ceph $CEPH_RELEASE installed on $NODE_NAME"
    ceph --version
}

main "$@"
