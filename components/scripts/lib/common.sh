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

# require_ipv4 NAME...: each NAME that is set must hold a dotted IPv4 address.
require_ipv4() {
    local name
    for name in "$@"; do
        if [[ -n "${!name:-}" && ! "${!name}" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]]; then
            fail "$name='${!name}' is not an IPv4 address"
        fi
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
