#!/usr/bin/env bash
# install-pve.sh STEP - install Proxmox VE 9 on a Debian 13 cloud VM, unattended, in four idempotent steps:
#   prepare  /etc/hosts, hostname check, time sync, Proxmox repository, upgrade, Proxmox kernel
#   reboot   reboot into the Proxmox kernel (does nothing when already running it)
#   finish   proxmox-ve and friends, Debian kernels removed, guest agent on
#   ready    wait until pveversion and the API on port 8006 answer; print the pveversion line
# Environment (always): NODE_HOSTNAME, NODE_FQDN, NODE_IP.
# Optional: PVE_SUITE (trixie), PVE_REPO_COMPONENT (pve-no-subscription), KEYRING_URL, KEYRING_SHA256,
#   DEADLINE_S (600), POLL_S (5), REBOOT_DELAY_S (5), PVE_LAB_ROOT (file tree root, for tests).
# Every step reads the state first and acts only when it differs: a second run changes nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh" # log, fail, require_*, deadline_passed

ROOT="${PVE_LAB_ROOT:-}"
PVE_SUITE="${PVE_SUITE:-trixie}"
PVE_REPO_COMPONENT="${PVE_REPO_COMPONENT:-pve-no-subscription}"
# The keyring published for PVE 9 (trixie), and its sha256 as documented by Proxmox.
TRIXIE_KEYRING_SHA256="136673be77aba35dcce385b28737689ad64fd785a797e57897589aed08db6e45"
KEYRING_URL="${KEYRING_URL:-https://enterprise.proxmox.com/debian/proxmox-archive-keyring-${PVE_SUITE}.gpg}"
KEYRING_PATH="/usr/share/keyrings/proxmox-archive-keyring.gpg"
SOURCES_PATH="/etc/apt/sources.list.d/proxmox.sources"
PVE_ENTERPRISE_SOURCES="/etc/apt/sources.list.d/pve-enterprise.sources"
CLOUD_HOSTS_DROPIN="/etc/cloud/cloud.cfg.d/99-pve-lab-hosts.cfg"
CLOUD_HOSTS_TEMPLATE="/etc/cloud/templates/hosts.debian.tmpl"
DEADLINE_S="${DEADLINE_S:-600}"
POLL_S="${POLL_S:-5}"
REBOOT_DELAY_S="${REBOOT_DELAY_S:-5}"
REBOOT_UNIT="pve-lab-reboot"
API_URL="https://localhost:8006/"
# Debian kernels to remove once the Proxmox kernel runs (genericcloud images ship the -cloud flavour).
DEBIAN_KERNEL_PATTERNS=("linux-image-amd64" "linux-image-cloud-amd64" "linux-image-6.12*" "os-prober")

require_env() {
    require_vars "Run as: NODE_HOSTNAME=pve1 NODE_FQDN=pve1.lab.example NODE_IP=10.10.10.11 bash install-pve.sh STEP" \
        NODE_HOSTNAME NODE_FQDN NODE_IP
    require_single_line NODE_HOSTNAME NODE_FQDN NODE_IP PVE_SUITE PVE_REPO_COMPONENT KEYRING_URL KEYRING_SHA256
    require_ipv4 NODE_IP
    require_fqdn NODE_FQDN
    [[ "$PVE_SUITE" =~ ^[a-z]+$ ]] || fail "PVE_SUITE='$PVE_SUITE' is not a Debian suite name like trixie"
    [[ "$PVE_REPO_COMPONENT" =~ ^(pve-no-subscription|pve-enterprise|pvetest)$ ]] ||
        fail "PVE_REPO_COMPONENT='$PVE_REPO_COMPONENT' (allowed: pve-no-subscription, pve-enterprise, pvetest)"
    [[ "$KEYRING_URL" =~ ^https://[^[:space:]]+$ ]] || fail "KEYRING_URL='$KEYRING_URL' must be an https:// URL"
    [[ "$NODE_HOSTNAME" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] ||
        fail "NODE_HOSTNAME='$NODE_HOSTNAME' is not a valid short host name (lower-case letters, digits, '-')"
    [[ "$NODE_FQDN" == "$NODE_HOSTNAME".* ]] ||
        fail "NODE_FQDN='$NODE_FQDN' must start with NODE_HOSTNAME followed by a dot ('$NODE_HOSTNAME.<domain>')"
    if [[ -n "${KEYRING_SHA256:-}" && ! "$KEYRING_SHA256" =~ ^[0-9a-f]{64}$ ]]; then
        fail "KEYRING_SHA256 must be 64 lower-case hex digits (a sha256), got '$KEYRING_SHA256'"
    fi
    require_seconds DEADLINE_S POLL_S REBOOT_DELAY_S
}

# write_if_changed PATH MODE < content: replace PATH only when its bytes differ; true when it wrote.
write_if_changed() {
    local path="$ROOT$1" mode="$2" tmp
    # Callers test the result, which turns off errexit in here: every write checks for itself.
    mkdir -p "$(dirname "$path")" || fail "cannot create the folder of $1"
    tmp="$(mktemp "$path.pve-lab.XXXXXX")" || fail "cannot write next to $1"
    cat >"$tmp" || fail "cannot write $tmp"
    if [[ -f "$path" ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp" || fail "cannot set the mode of $tmp"
    mv -f "$tmp" "$path" || fail "cannot replace $1"
    log "wrote $1"
}

installed_packages() {
    dpkg-query -W -f='${db:Status-Status} ${Package}\n' 2>/dev/null | awk '$1 == "installed" { print $2 }'
}

# missing_packages PKG...: prints those not installed.
missing_packages() {
    local have pkg
    have="$(installed_packages)"
    for pkg in "$@"; do
        if ! grep -qxF -- "$pkg" <<<"$have"; then
            printf '%s\n' "$pkg"
        fi
    done
}

APT_LOG=/var/log/pve-lab/apt.log

apt_get() {
    # The dpkg lock may still be held by cloud-init's first-boot upgrade: wait for it up to the deadline.
    # apt's output goes to a log file on the node, not into the step's output (Pulumi keeps that in its state).
    local rc=0
    mkdir -p "${PVE_LAB_ROOT:-}${APT_LOG%/*}"
    log "apt-get $1 (its output: $APT_LOG)"
    DEBIAN_FRONTEND=noninteractive apt-get -y -q \
        -o "DPkg::Lock::Timeout=${DEADLINE_S%.*}" \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >>"${PVE_LAB_ROOT:-}$APT_LOG" 2>&1 ||
        rc=$?
    if ((rc != 0)); then
        tail -n 15 "${PVE_LAB_ROOT:-}$APT_LOG" >&2
        fail "apt-get $1 failed (exit $rc): its last lines are above, all of it in $APT_LOG on $(hostname)" \
            "Fix the cause (network, mirror, held packages) and run this step again; it resumes where it stopped."
    fi
}

# apt_update: `apt-get update` until the step's deadline while another apt (apt-daily) holds the lists lock
# (DPkg::Lock::Timeout covers the dpkg lock only), then fail when any repository could not be fetched:
# apt exits 0 on an unreachable host, with only "W: Failed to fetch" and "W: Some index files failed".
apt_update() {
    local start=$SECONDS output status
    mkdir -p "${PVE_LAB_ROOT:-}${APT_LOG%/*}"
    log "apt-get update (its output: $APT_LOG)"
    while :; do
        status=0
        output="$(DEBIAN_FRONTEND=noninteractive apt-get -q update 2>&1)" || status=$?
        printf '%s\n' "$output" >>"${PVE_LAB_ROOT:-}$APT_LOG"
        if ((status != 0)) && grep -q '^E: Could not get lock /var/lib/apt/lists/lock' <<<"$output"; then
            if deadline_passed "$start"; then
                fail "apt-get update: another apt process still holds /var/lib/apt/lists/lock after ${DEADLINE_S}s" \
                    "See what runs apt on $NODE_HOSTNAME ('systemctl status apt-daily.service'), then run this step again."
            fi
            log "another apt process holds the package lists lock (apt-daily?); trying again in ${POLL_S}s"
            sleep "$POLL_S"
            continue
        fi
        break
    done
    local failed
    failed="$(grep -E '^(E: |W: Failed to fetch|W: Some index files failed|W: GPG error)' <<<"$output" || true)"
    if ((status != 0)) || [[ -n "$failed" ]]; then
        fail "apt-get update could not read every repository (exit $status): ${failed//$'\n'/ } (all of it in $APT_LOG on $(hostname))" \
            "Check that $NODE_HOSTNAME reaches the repositories in /etc/apt/sources.list.d (DNS, proxy, subscription), then run this step again; it resumes where it stopped."
    fi
}

# PVE_ENTERPRISE_SOURCES is pve-manager's conffile, enabled, for the enterprise repository, which answers
# 401 without a subscription (so every `apt-get update` would fail). Add `Enabled: no` to its stanzas
# unless the enterprise repository is what was asked for; dpkg keeps an edited conffile on upgrades
# (--force-confold here; a prompt for a student's own upgrade).
disable_enterprise_sources() {
    local path="$ROOT$PVE_ENTERPRISE_SOURCES" wanted
    [[ "$PVE_REPO_COMPONENT" != pve-enterprise && -f "$path" ]] || return 0
    wanted="$(awk '
        function flush() {
            if (n == 0) return
            for (i = 0; i < n; i++) {
                if (enterprise && block[i] ~ /^Enabled:/) block[i] = "Enabled: no"
                print block[i]
            }
            if (enterprise && !has_enabled) print "Enabled: no"
            n = 0; enterprise = 0; has_enabled = 0
        }
        /^[[:space:]]*$/ { flush(); print; next }
        { block[n++] = $0 }
        /^URIs:.*enterprise\.proxmox\.com/ { enterprise = 1 }
        /^Enabled:/ { has_enabled = 1 }
        END { flush() }' "$path")"
    if printf '%s\n' "$wanted" | write_if_changed "$PVE_ENTERPRISE_SOURCES" 644; then
        log "disabled the enterprise repository in $PVE_ENTERPRISE_SOURCES (it needs a subscription; component is $PVE_REPO_COMPONENT)"
    fi
}

apt_install_missing() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    if ((${#missing[@]} == 0)); then
        log "already installed: $*"
        return 0
    fi
    log "installing: ${missing[*]}"
    apt_get install "${missing[@]}"
}

ensure_unit_running() {
    local unit="$1"
    if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl enable "$unit"
    fi
    if ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
    fi
}

running_pve_kernel() {
    local kernel
    kernel="$(uname -r)"
    [[ "$kernel" == *-pve* ]]
}

# --- prepare ---------------------------------------------------------------------------------------

# The hosts file as PVE needs it: the node name resolves to its own IP, not loopback (pmxcfs refuses).
# Keeps other lines; drops 127.0.1.1, older mappings of this node's names/IP; our line follows 127.0.0.1.
desired_hosts() {
    local current="$ROOT/etc/hosts"
    { [[ -f "$current" ]] && cat "$current"; true; } | awk -v ip="$NODE_IP" -v fqdn="$NODE_FQDN" -v host="$NODE_HOSTNAME" '
        BEGIN { ours = ip " " fqdn " " host; n = 0; placed = 0 }
        /^[[:space:]]*(#|$)/ { lines[n++] = $0; next }
        $1 == "127.0.1.1" || $1 == ip { next }
        {
            out = $1; names = 0
            for (i = 2; i <= NF; i++) {
                if ($i ~ /^#/) { for (; i <= NF; i++) out = out " " $i; break }
                if ($i == host || $i == fqdn) continue
                out = out " " $i; names++
            }
            if (names == 0) next
            lines[n++] = out
            if ($1 == "127.0.0.1" && !placed) { lines[n++] = ours; placed = 1 }
        }
        END {
            if (!placed) { print "127.0.0.1 localhost"; print ours }
            for (i = 0; i < n; i++) print lines[i]
        }'
}

configure_hosts() {
    local hosts
    hosts="$(desired_hosts)"
    printf '%s\n' "$hosts" | write_if_changed /etc/hosts 644 || log "/etc/hosts already maps $NODE_IP $NODE_FQDN $NODE_HOSTNAME"
    # PVE's cloud-init user-data says manage_etc_hosts: true, and user-data overrides cloud.cfg.d, so
    # the drop-in alone is not enough: the template cloud-init renders at boot gets the same content.
    printf '%s\n' "# pve-lab: /etc/hosts is static on a Proxmox VE node (the node name must map to its IP)" \
        "manage_etc_hosts: false" | write_if_changed "$CLOUD_HOSTS_DROPIN" 644 || true
    if [[ -d "$ROOT$(dirname "$CLOUD_HOSTS_TEMPLATE")" ]]; then
        printf '%s\n' "## template:jinja" "$hosts" | write_if_changed "$CLOUD_HOSTS_TEMPLATE" 644 || true
    fi
}

check_hostname() {
    require_hostname NODE_HOSTNAME "Check that NODE_IP=$NODE_IP is the right VM, or fix its cloud-init hostname and reboot it."
}


download() {
    local url="$1" out="$2"
    if command -v curl >/dev/null; then
        curl -fsSL --proto '=https' --max-time 60 -o "$out" "$url"
    elif command -v wget >/dev/null; then
        wget -q --https-only -T 60 -O "$out" "$url"
    else
        log "neither curl nor wget is installed"
        return 1
    fi
}

install_keyring() {
    local expected="${KEYRING_SHA256:-}" target="$ROOT$KEYRING_PATH" tmp actual
    if [[ -z "$expected" ]]; then
        [[ "$PVE_SUITE" == "trixie" ]] ||
            fail "no known keyring hash for PVE_SUITE=$PVE_SUITE" "Set KEYRING_URL and KEYRING_SHA256 for that suite."
        expected="$TRIXIE_KEYRING_SHA256"
    fi
    if [[ -f "$target" ]]; then
        # Once proxmox-ve is in, the proxmox-archive-keyring package owns (and updates) this file.
        if [[ -z "$(missing_packages proxmox-archive-keyring)" ]]; then
            log "keyring managed by the proxmox-archive-keyring package"
            return 0
        fi
        if [[ "$(sha256sum <"$target" | cut -d' ' -f1)" == "$expected" ]]; then
            log "keyring already in place ($KEYRING_PATH)"
            return 0
        fi
    fi
    mkdir -p "$(dirname "$target")"
    tmp="$(mktemp "$target.pve-lab.XXXXXX")"
    if ! download "$KEYRING_URL" "$tmp"; then
        rm -f "$tmp"
        fail "could not download the Proxmox keyring from $KEYRING_URL" "Check the node's DNS and internet access, then run this step again."
    fi
    actual="$(sha256sum <"$tmp" | cut -d' ' -f1)"
    if [[ "$actual" != "$expected" ]]; then
        rm -f "$tmp"
        fail "the keyring from $KEYRING_URL has sha256 $actual, expected $expected; not trusting it" \
            "Compare with the Proxmox install guide; if Proxmox published a new keyring, set KEYRING_SHA256."
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$target"
    log "installed the Proxmox keyring ($KEYRING_PATH, sha256 $actual)"
}

# Writes the deb822 source; true when it changed (so the package lists are stale).
write_sources() {
    printf '%s\n' "Types: deb" "URIs: http://download.proxmox.com/debian/pve" "Suites: $PVE_SUITE" \
        "Components: $PVE_REPO_COMPONENT" "Signed-By: $KEYRING_PATH" | write_if_changed "$SOURCES_PATH" 644
}

step_prepare() {
    configure_hosts
    check_hostname
    wait_for_cloud_init "$NODE_HOSTNAME"
    install_keyring
    local lists_stale=0
    if write_sources; then
        lists_stale=1
    fi
    disable_enterprise_sources
    if [[ -n "$(missing_packages proxmox-default-kernel chrony)" ]]; then
        # First run: refresh, upgrade Debian, then the Proxmox kernel and chrony (time sync for corosync/Ceph).
        apt_update
        lists_stale=0
        if [[ -n "$(missing_packages proxmox-default-kernel)" ]]; then
            apt_get full-upgrade
        fi
        apt_install_missing chrony proxmox-default-kernel
    fi
    if ((lists_stale)); then
        apt_update
    fi
    ensure_unit_running chrony.service
    log "prepare done: the Proxmox kernel is installed; next step: reboot"
}

# --- reboot ----------------------------------------------------------------------------------------

step_reboot() {
    if running_pve_kernel; then
        log "already running the Proxmox kernel $(uname -r): no reboot needed"
        return 0
    fi
    [[ -z "$(missing_packages proxmox-default-kernel)" ]] ||
        fail "proxmox-default-kernel is not installed, so a reboot would not change the kernel" "Run the prepare step first."
    if systemctl is-active --quiet "$REBOOT_UNIT.timer"; then
        log "a reboot is already scheduled ($REBOOT_UNIT.timer)"
        return 0
    fi
    # Close the door first: the next step's SSH dial must not get in before the reboot. Debian's sshd
    # uses KillMode=process, so this session survives the stop.
    local unit
    for unit in ssh.socket ssh.service; do
        if systemctl is-active --quiet "$unit"; then
            systemctl stop "$unit"
        fi
    done
    # A timer fires up to AccuracySec (1 min by default) late: ask for the delay as given.
    if ! systemd-run --on-active="$REBOOT_DELAY_S" --timer-property=AccuracySec=1s --unit="$REBOOT_UNIT" \
        --description="pve-lab: reboot into the Proxmox kernel" systemctl reboot; then
        systemctl start ssh.service || true
        fail "could not schedule the reboot (systemd-run failed); sshd restarted" "Reboot $NODE_HOSTNAME by hand, then run the finish step."
    fi
    log "sshd stopped; rebooting in ${REBOOT_DELAY_S}s into the Proxmox kernel"
}

# --- finish ----------------------------------------------------------------------------------------

preseed_postfix() {
    [[ -n "$(missing_packages postfix)" ]] || return 0
    printf '%s\n' "postfix postfix/main_mailer_type select Local only" \
        "postfix postfix/mailname string $NODE_FQDN" | debconf-set-selections
    log "preseeded postfix: Local only, mail name $NODE_FQDN"
}

# Installed packages matching the Debian kernel patterns (never the running kernel).
debian_kernel_packages() {
    local running pattern pkg
    running="linux-image-$(uname -r)"
    while read -r pkg; do
        for pattern in "${DEBIAN_KERNEL_PATTERNS[@]}"; do
            # shellcheck disable=SC2053 # the patterns are globs on purpose
            if [[ "$pkg" == $pattern && "$pkg" != "$running" ]]; then
                printf '%s\n' "$pkg"
                break
            fi
        done
    done < <(installed_packages)
}

# True when grub.cfg is missing or still boots a non-Proxmox kernel.
grub_config_stale() {
    local cfg="$ROOT/boot/grub/grub.cfg"
    [[ -f "$cfg" ]] || return 0
    grep -oE 'vmlinuz-[^ ]+' "$cfg" | grep -qv -- '-pve'
}

step_finish() {
    running_pve_kernel ||
        fail "the running kernel is $(uname -r), not a Proxmox kernel: the node did not reboot into it" \
            "Run the reboot step (or reboot $NODE_HOSTNAME by hand), check 'uname -r' ends in -pve, then run finish again."
    preseed_postfix
    disable_enterprise_sources
    apt_install_missing proxmox-ve postfix open-iscsi chrony qemu-guest-agent
    disable_enterprise_sources
    local old_kernels
    mapfile -t old_kernels < <(debian_kernel_packages)
    if ((${#old_kernels[@]})); then
        log "removing Debian kernel packages / os-prober: ${old_kernels[*]}"
        apt_get remove "${old_kernels[@]}"
    fi
    if grub_config_stale; then
        update-grub >&2
    fi
    ensure_unit_running qemu-guest-agent.service
    log "finish done: Proxmox VE is installed; next step: ready"
}

# --- ready -----------------------------------------------------------------------------------------

step_ready() {
    local start=$SECONDS version="" version_ok=0 api_ok=0 last_error=""
    while :; do
        if ((!version_ok)); then
            if version="$(pveversion 2>&1)"; then
                version_ok=1
            else
                last_error="pveversion: ${version//$'\n'/ }"
            fi
        fi
        if ((version_ok)) && ((!api_ok)); then
            local api_error
            if api_error="$(curl -ksS -o /dev/null --max-time 5 "$API_URL" 2>&1)"; then
                api_ok=1
            else
                last_error="API $API_URL: ${api_error//$'\n'/ }"
            fi
        fi
        if ((version_ok && api_ok)); then
            printf '%s\n' "$version"
            log "ready: $version; web UI https://$NODE_IP:8006/"
            return 0
        fi
        if deadline_passed "$start"; then
            local waiting="pveversion"
            ((version_ok)) && waiting="the API on $API_URL"
            fail "$waiting did not come up within ${DEADLINE_S}s on $NODE_HOSTNAME; last error: $last_error" \
                "Check 'systemctl status pve-cluster pveproxy' and 'journalctl -b -u pveproxy' on $NODE_HOSTNAME, then run this step again."
        fi
        sleep "$POLL_S"
    done
}

main() {
    local step="${1:-}"
    case "$step" in
        prepare | reboot | finish | ready) ;;
        *) fail "unknown step '${step}'" "Usage: install-pve.sh prepare|reboot|finish|ready" ;;
    esac
    require_env
    "step_$step"
}

main "$@"
