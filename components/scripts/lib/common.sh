# shellcheck shell=bash
# lib/common.sh - helpers every node script sources from its own folder:
#   # shellcheck source=lib/common.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# It only defines functions: sourcing it runs nothing and sets no variable. Script-specific checks stay
# in the scripts; what is here is worded the same in all of them.

# log MESSAGE...: one line on stderr, prefixed "pve-lab:" (stdout is kept for a step's result).
log() { printf 'pve-lab: %s\n' "$*" >&2; }

# fail MESSAGE [WHAT-TO-DO]: log the error, then what to do as the last line, and exit 1.
fail() {
    log "error: $1"
    if [[ -n "${2:-}" ]]; then
        log "$2"
    fi
    exit 1
}

# require_vars RUN-AS NAME...: fail naming every NAME that is unset or empty; RUN-AS shows a correct call.
require_vars() {
    local run_as="$1" missing=() name
    shift
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || missing+=("$name")
    done
    if ((${#missing[@]})); then
        fail "missing environment variable(s): ${missing[*]}" "$run_as"
    fi
}

# shown VALUE: VALUE quoted for a one-line message ('x', or $'x\n' with control characters escaped).
shown() {
    if [[ "$1" =~ [[:cntrl:]] ]]; then
        printf '%q' "$1"
    else
        printf "'%s'" "$1"
    fi
}

# require_single_line NAME...: each NAME that is set must be one line without control characters
# (a newline in a value would write extra lines into /etc/hosts or an apt sources file).
require_single_line() {
    local name
    for name in "$@"; do
        if [[ "${!name:-}" =~ [[:cntrl:]] ]]; then
            fail "$name=$(shown "${!name}") must be a single line without control characters"
        fi
    done
}

# require_ipv4 NAME...: each NAME that is set must hold a dotted IPv4 address (four octets 0-255, no leading zeros).
require_ipv4() {
    local name octet
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || continue
        if [[ ! "${!name}" =~ ^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$ ]]; then
            fail "$name=$(shown "${!name}") is not an IPv4 address"
        fi
        for octet in "${BASH_REMATCH[@]:1}"; do
            ((octet <= 255)) || fail "$name='${!name}' is not an IPv4 address (octet $octet is over 255)"
        done
    done
}

# require_fqdn NAME: NAME must be a fully qualified host name: lower-case DNS labels of 1-63 letters, digits
# and '-' (not at either end), at least two of them, at most 253 characters in all.
require_fqdn() {
    local value="${!1:-}" label labels
    require_single_line "$1"
    ((${#value} <= 253)) || fail "$1 is longer than 253 characters"
    IFS=. read -ra labels <<<"$value"
    ((${#labels[@]} >= 2)) && [[ "$value" != *. ]] || fail "$1='$value' is not a fully qualified name like pve1.lab.internal"
    for label in "${labels[@]}"; do
        [[ "$label" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
            fail "$1='$value' has the label '$label': DNS labels are 1-63 lower-case letters, digits and '-' (not at the ends)"
    done
}

# require_seconds NAME...: each NAME must hold a number of seconds (5 or 2.5), e.g. DEADLINE_S and POLL_S.
require_seconds() {
    local name
    for name in "$@"; do
        [[ "${!name:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "$name='${!name:-}' must be a number of seconds"
    done
}

# require_hostname NAME [WHAT-TO-DO]: this machine's host name must be the value of NAME (the right VM?).
require_hostname() {
    local current
    current="$(hostname)"
    [[ "$current" == "${!1}" ]] || fail "this machine is named '$current' but $1 is '${!1}'" "${2:-}"
}

# deadline_passed START: true once DEADLINE_S seconds have gone by since START (a value of $SECONDS).
deadline_passed() {
    local start="$1"
    ((SECONDS - start >= ${DEADLINE_S%.*}))
}

# remaining_s START: whole seconds left until DEADLINE_S has gone by since START (at least 1).
remaining_s() {
    local left=$((${DEADLINE_S%.*} - (SECONDS - $1)))
    ((left > 0)) || left=1
    printf '%s\n' "$left"
}

# bounded START CMD...: run CMD, killed once the step's deadline (DEADLINE_S since START) has passed: PVE
# tools can wait without end (pvecm add waits for quorum, apt for a lock). Exit 124 or 137: it was killed.
bounded() {
    local start="$1"
    shift
    timeout --kill-after=10 "$(remaining_s "$start")" "$@"
}

# timed_out RC: true when RC is the exit status of a command `bounded` killed.
timed_out() { (($1 == 124 || $1 == 137)); }

# split_output OUT_VAR ERR_VAR CMD...: run CMD; its stdout into OUT_VAR (what gets parsed), its stderr
# into ERR_VAR (for messages; warnings must not end up in JSON). Returns CMD's exit status.
# shellcheck disable=SC2034 # out_ref and err_ref are namerefs: they set the caller's variables
split_output() {
    local -n out_ref="$1" err_ref="$2"
    shift 2
    local err_file rc=0
    err_file="$(mktemp)"
    out_ref="$("$@" 2>"$err_file")" || rc=$?
    err_ref="$(<"$err_file")"
    rm -f "$err_file"
    return "$rc"
}

# wait_for_cloud_init WHERE: poll until cloud-init's first boot is over (it sets the host name and keys, and
# may hold the dpkg lock while it upgrades packages), up to DEADLINE_S. Nothing to wait for without cloud-init;
# a first boot that ended with errors is logged and not waited on. WHERE names the machine in messages.
wait_for_cloud_init() {
    local where="$1" status="" start=$SECONDS
    command -v cloud-init >/dev/null || return 0
    while :; do
        status="$(cloud-init status 2>/dev/null | sed -n 's/^status: *//p')" || true
        case "$status" in
            running | "not started" | "") ;;
            error) log "cloud-init reported errors (see 'cloud-init status --long'); continuing"; return 0 ;;
            *) return 0 ;;
        esac
        if deadline_passed "$start"; then
            fail "cloud-init still '${status:-no answer}' after ${DEADLINE_S}s on $where" \
                "Look at 'cloud-init status --long' on $where, then run this step again."
        fi
        sleep "$POLL_S"
    done
}
