# shellcheck shell=bash
# A Debian bookworm test host with a real systemd as PID 1, booted with systemd-nspawn on a
# machine whose own init is not systemd. Sourced by scripts/systemd-e2e; needs root.
#
# - The root tree is debootstrapped once and cached ($PIKU_E2E_CACHE, default
#   /var/cache/piku-e2e), keyed by the package list: every package the tests need is in it,
#   since the container has no network (only `lo`).
# - A run boots an overlay of that pristine tree whose upper layer is a directory of the run
#   (host_new): the tree persists across a power-off and boot of the same run (the reboot
#   check) and is thrown away at the end; the cached tree is never written.
# - nspawn runs in cgroups of its own (piku-e2e.<pid>.<n> in the name=systemd and unified
#   hierarchies) and in a private mount namespace: host_down kills whatever is left with
#   cgroup.kill and every mount dies with the namespace, even after a SIGKILL of this script.
#
# Helpers for checks: host_root CMD… (as root in the container), host_client 'shell text'
# (as the client user, in ~client), host_http URL [curl args…] (curl from inside, through the
# container's own nginx), host_journal ARGS… (journalctl).

HOST_SUITE=bookworm
# Everything the checks run inside. Only what they need: CI debootstraps this on a fresh clone.
HOST_PACKAGES=(systemd systemd-sysv dbus procps openssh-server openssh-client git nginx
    python3-venv curl sudo adduser)
HOST_CACHE=${PIKU_E2E_CACHE:-/var/cache/piku-e2e}
HOST_WHEELS_FOR=(flask pyuwsgi)

host_log() { echo "[host $(date +%T)] $*" >&2; }

# The Debian mirror this machine's apt uses (deb822 `URIs:` or a one-line `deb` entry).
host_mirror() {
    local u
    u=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [ -n "$u" ] || u=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
    echo "${u:-http://deb.debian.org/debian}"
}

host_key() { printf '%s\n' "$HOST_SUITE" "$@" | sha256sum | cut -c1-12; }

# The cached root tree (built on first use, under a lock, published by rename so a killed
# debootstrap never leaves a half tree behind). Prints its path.
host_base() {
    local base
    base="$HOST_CACHE/$HOST_SUITE-$(host_key "${HOST_PACKAGES[@]}")"
    mkdir -p "$HOST_CACHE"
    (
        flock 9
        [ -x "$base/lib/systemd/systemd" ] && exit 0
        local tmp="$base.building.$$" t0=$SECONDS
        rm -rf --one-file-system "$base".building.*
        host_log "debootstrap $HOST_SUITE -> $base (first run only)"
        local includes
        includes=$(IFS=,; echo "${HOST_PACKAGES[*]}")
        if ! debootstrap --variant=minbase --include="$includes" "$HOST_SUITE" "$tmp" "$(host_mirror)" \
            >"$HOST_CACHE/debootstrap.log" 2>&1; then
            tail -20 "$HOST_CACHE/debootstrap.log" >&2
            rm -rf --one-file-system "$tmp"
            exit 1
        fi
        echo piku-host >"$tmp/etc/hostname"
        systemd-id128 new >"$tmp/etc/machine-id"   # never the host's id
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        mv "$tmp" "$base"
        host_log "debootstrap took $((SECONDS - t0)) s"
    ) 9>"$HOST_CACHE/.lock" || return 1
    echo "$base"
}

# Python wheels for the Flask example, from PyPI on this machine: the container has no
# network, so its pip reads them from a directory (the lab shortcut; a real host asks PyPI).
host_wheels() {
    local dir
    dir="$HOST_CACHE/wheels-$(host_key "${HOST_WHEELS_FOR[@]}")"
    mkdir -p "$HOST_CACHE"
    (
        flock 9
        [ -e "$dir/.complete" ] && exit 0
        rm -rf "$dir"
        python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --dest "$dir" "${HOST_WHEELS_FOR[@]}" >&2 || { rm -rf "$dir"; exit 1; }
        touch "$dir/.complete"
    ) 9>"$HOST_CACHE/.wheels.lock" || return 1
    echo "$dir"
}

HOST_RUN='' HOST_PID='' HOST_LEADER='' HOST_CG='' HOST_BOOTS=0 HOST_BASE='' HOST_BINDS=()

# A new host: a fresh upper layer over the cached tree. $1: a name for its directory.
host_new() {
    HOST_BASE=$(host_base) || return 1
    HOST_RUN=$(mktemp -d "/var/tmp/piku-e2e.$$.${1:-host}.XXXX")
    mkdir -p "$HOST_RUN"/{upper,work,root,share}
    HOST_BINDS=("$HOST_RUN/share:/mnt/piku-e2e")
}

# Runs inside `unshare --mount` (a private mount namespace): the overlay and nspawn's own
# mounts die with it. The host's /run is on disk here: a tmpfs keeps nspawn's files off it.
HOST_INNER='set -e
mount -t tmpfs -o mode=0755 piku-e2e-run /run/systemd
mount -t overlay -o "lowerdir=$HOST_BASE,upperdir=$HOST_RUN/upper,workdir=$HOST_RUN/work" piku-e2e "$HOST_RUN/root"
exec systemd-nspawn "$@"'

# Boots the host's tree; returns once systemd says running (or degraded).
host_up() {
    HOST_BOOTS=$((HOST_BOOTS + 1))
    local args=(
        --boot --directory="$HOST_RUN/root" --machine="piku-e2e-$$-$HOST_BOOTS" --hostname=piku-host
        --register=no --keep-unit        # no machined / D-Bus / systemd needed on this machine
        --private-network                # only `lo`: nothing reaches or leaves the host
        --link-journal=no --resolv-conf=off --timezone=off
        --console=read-only              # boot messages to console.log; works without a TTY
    )
    local b
    for b in "${HOST_BINDS[@]}"; do args+=(--bind-ro="$b"); done
    HOST_CG="piku-e2e.$$.$HOST_BOOTS"
    for b in systemd unified; do mkdir -p "/sys/fs/cgroup/$b/$HOST_CG" || return 1; done
    local t0=$SECONDS
    (
        for b in systemd unified; do echo "$BASHPID" >"/sys/fs/cgroup/$b/$HOST_CG/cgroup.procs"; done
        export HOST_BASE HOST_RUN
        exec unshare --mount --propagation private -- /bin/sh -c "$HOST_INNER" sh "${args[@]}"
    ) </dev/null >>"$HOST_RUN/console.log" 2>&1 &
    HOST_PID=$!
    for _ in $(seq 600); do
        HOST_LEADER=$(pgrep -P "$HOST_PID" -x systemd | head -n1 || true)
        [ -n "$HOST_LEADER" ] && break
        if ! kill -0 "$HOST_PID" 2>/dev/null; then
            host_log "nspawn exited:"; tail -20 "$HOST_RUN/console.log" >&2; host_down; return 1
        fi
        sleep 0.1
    done
    [ -n "$HOST_LEADER" ] || { host_log "no PID 1 after 60 s"; host_down; return 1; }
    local state=
    for _ in $(seq 120); do
        state=$(host_root timeout 30 systemctl is-system-running --wait 2>/dev/null) && break
        case "$state" in running | degraded) break ;; esac
        sleep 0.5
    done
    host_log "boot $HOST_BOOTS: $state after $((SECONDS - t0)) s (nspawn $HOST_PID, PID 1 = $HOST_LEADER)"
    case "$state" in
        running | degraded) return 0 ;;
        *) tail -30 "$HOST_RUN/console.log" >&2; host_down; return 1 ;;
    esac
}

# Powers the container off (systemd stops every service, as on a real host), then removes
# whatever is left: nspawn's cgroups are killed and removed. Non-zero if it had to kill.
host_down() {
    local rc=0
    if [ -n "$HOST_PID" ] && kill -0 "$HOST_PID" 2>/dev/null; then
        [ -n "$HOST_LEADER" ] && host_root systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 600); do kill -0 "$HOST_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$HOST_PID" 2>/dev/null; then
            host_log "poweroff took over 60 s: SIGTERM to nspawn"; kill -TERM "$HOST_PID"; rc=1
            for _ in $(seq 100); do kill -0 "$HOST_PID" 2>/dev/null || break; sleep 0.1; done
        fi
    fi
    if [ -n "$HOST_CG" ]; then
        host_kill_cgroup "$HOST_CG" || rc=1
    fi
    [ -n "$HOST_PID" ] && wait "$HOST_PID" 2>/dev/null
    HOST_PID='' HOST_LEADER='' HOST_CG=
    return $rc
}

# cgroup.kill on one of our cgroups (only processes this script started live there), then
# removes it from both hierarchies.
host_kill_cgroup() {
    local cg=$1 h rc=0
    local unified="/sys/fs/cgroup/unified/$cg"
    if [ -d "$unified" ] && [ -n "$(find "$unified" -name cgroup.procs -exec cat {} + 2>/dev/null)" ]; then
        host_log "killing what is left in $cg"; echo 1 >"$unified/cgroup.kill"; rc=1
        for _ in $(seq 50); do
            [ -z "$(find "$unified" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    for h in systemd unified; do
        [ -d "/sys/fs/cgroup/$h/$cg" ] && find "/sys/fs/cgroup/$h/$cg" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "/sys/fs/cgroup/$h/$cg" ] && { host_log "cgroup $h/$cg is left over"; rc=1; }
    done
    return $rc
}

# The host is gone for good: powered off, its run directory removed (PIKU_E2E_KEEP=1 keeps it).
host_destroy() {
    host_down || true
    if [ -n "$HOST_RUN" ] && [ -d "$HOST_RUN" ]; then
        if findmnt -rn -o TARGET | grep -qF -- "$HOST_RUN"; then
            host_log "mounts left under $HOST_RUN:"; findmnt | grep -F -- "$HOST_RUN" >&2
            return 1
        fi
        if [ "${PIKU_E2E_KEEP:-0}" = 1 ]; then
            host_log "kept $HOST_RUN"
        else
            rm -rf --one-file-system "$HOST_RUN"
        fi
    fi
    HOST_RUN=
}

# What a SIGKILLed earlier run left: its cgroups and run directories (named after its pid,
# so a run still going in parallel is left alone).
host_reap() {
    local cg pid dir
    for cg in /sys/fs/cgroup/unified/piku-e2e.* /sys/fs/cgroup/systemd/piku-e2e.*; do
        [ -d "$cg" ] || continue
        pid=$(basename "$cg" | cut -d. -f2)
        kill -0 "$pid" 2>/dev/null && continue
        host_kill_cgroup "$(basename "$cg")" || true
    done
    for dir in /var/tmp/piku-e2e.*; do
        [ -d "$dir" ] || continue
        pid=$(basename "$dir" | cut -d. -f2)
        kill -0 "$pid" 2>/dev/null && continue
        findmnt -rn -o TARGET | grep -qF -- "$dir" || rm -rf --one-file-system "$dir"
    done
}

# Runs CMD… in the host's tree WITHOUT booting it (nspawn's own stub init, no systemd): for
# checks of a host without systemd. Output on stdout.
host_run_unbooted() {
    HOST_BOOTS=$((HOST_BOOTS + 1))
    local args=(
        --directory="$HOST_RUN/root" --machine="piku-e2e-$$-$HOST_BOOTS" --hostname=piku-host
        --register=no --keep-unit --private-network --link-journal=no --resolv-conf=off
        --timezone=off --quiet --as-pid2
    )
    local b rc
    for b in "${HOST_BINDS[@]}"; do args+=(--bind-ro="$b"); done
    local cg="piku-e2e.$$.$HOST_BOOTS"
    for b in systemd unified; do mkdir -p "/sys/fs/cgroup/$b/$cg" || return 1; done
    (
        for b in systemd unified; do echo "$BASHPID" >"/sys/fs/cgroup/$b/$cg/cgroup.procs"; done
        export HOST_BASE HOST_RUN
        exec unshare --mount --propagation private -- /bin/sh -c "$HOST_INNER" sh "${args[@]}" -- "$@"
    ) </dev/null
    rc=$?
    host_kill_cgroup "$cg" || true
    return $rc
}

# Whatever this run still has in its cgroups (a check's extra host that was not torn down):
# killed and removed. Non-zero if there was anything.
host_reap_own() {
    local cg rc=0
    for cg in /sys/fs/cgroup/unified/piku-e2e."$$".* /sys/fs/cgroup/systemd/piku-e2e."$$".*; do
        [ -d "$cg" ] || continue
        host_kill_cgroup "$(basename "$cg")" || true
        rc=1
    done
    return $rc
}

# --- running things inside ------------------------------------------------------------------

# As root inside the container (all its namespaces, a clean environment). stdin passes through.
# Such a process sits outside the container's cgroup tree; use `systemd-run --wait --pipe`
# inside when cgroup membership matters.
host_root() {
    nsenter --target "$HOST_LEADER" --all -- /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        TERM=dumb LANG=C.UTF-8 SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

# As the client user (a developer on "their machine"), through a login shell, in ~client.
host_client() {
    host_root runuser -l client -c "$1"
}

# curl from inside the container, as the client: by host name through the container's nginx.
host_http() {
    local url=$1 extra=
    shift
    [ $# -eq 0 ] || extra=$(printf '%q ' "$@")
    host_client "curl -sS --max-time 10 $extra$(printf '%q' "$url")"
}

host_journal() { host_root journalctl --no-pager "$@"; }
