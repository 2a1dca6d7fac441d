#!/bin/sh
# Make libvirtd (QEMU driver, system mode) answer on qemu:///system on this host,
# without systemd, and make the directories Nebula keeps guest files in reachable
# by the QEMU processes libvirt starts.  Run as root.  Idempotent: when libvirtd
# already answers with our qemu.conf, it only checks (and fixes directory modes).
#
#   ops/host/libvirt-up.sh [DIR...]
#
# DIR: directories holding kernels, initrds, disks or console logs of guests
# (a node's state dir, e.g. /var/lib/nebula).  Each DIR and its parents are made
# searchable (o+x, never readable) by the QEMU user where they are not already;
# missing DIRs are created 0755.
#
# Written for hosts without systemd (containers, CI sandboxes, throwaway VMs) where
# Debian's libvirt-daemon-system (which would create the accounts, the directories,
# qemu.conf and the units) is not installed: ops/bootstrap.sh installs only
# libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients and qemu-system-x86.
# Where systemd already runs libvirtd, this still works: it adjusts qemu.conf and,
# if that changed, restarts libvirtd through systemctl.
#
# How QEMU runs (our block in /etc/libvirt/qemu.conf, see below):
#   as libvirt-qemu (Debian's default, unprivileged), dynamic_ownership = 1: libvirt
#   chowns each guest's disks, kernel and initrd to libvirt-qemu while it runs and
#   back to root:root when it stops, so files may have any mode; only the
#   directories on their paths must be searchable (the DIR arguments).  Serial
#   console logs (<serial><log file=...>) are written by virtlogd, as root.
#
# Environment:
#   NEBULA_QEMU_USER    user QEMU runs as (default libvirt-qemu); "root" runs QEMU as
#                       root with dynamic_ownership = 0 (nothing to chown or reach).
#   LIBVIRT_UP_TIMEOUT  seconds to wait for libvirtd to answer (default 60).
set -eu

URI="qemu:///system"
QEMU_CONF=/etc/libvirt/qemu.conf
QEMU_USER="${NEBULA_QEMU_USER:-libvirt-qemu}"
TIMEOUT="${LIBVIRT_UP_TIMEOUT:-60}"
LOG=/var/log/libvirt/libvirtd.log

die() { echo "libvirt-up: $*" >&2; exit 1; }
say() { echo "libvirt-up: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root"
for b in libvirtd virtlogd virsh qemu-system-x86_64 setpriv; do
    command -v "$b" >/dev/null 2>&1 ||
        die "$b not found: run ops/bootstrap.sh (apt-get install libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86)"
done
case "$QEMU_USER" in
    root) QEMU_GROUP=root ;;
    libvirt-qemu) QEMU_GROUP=libvirt-qemu ;;
    *) QEMU_GROUP="$(id -gn "$QEMU_USER" 2>/dev/null)" || die "no user $QEMU_USER" ;;
esac

# --- directories libvirtd and virtlogd expect but do not create ---------------------
# (without /var/log/libvirt the QEMU driver fails to load.)
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/images /var/lib/libvirt/qemu \
         /var/cache/libvirt/qemu /run/libvirt /etc/libvirt

# --- the accounts Debian's libvirt-daemon-system would have created -----------------
# libvirt resolves its compiled-in default user and group (libvirt-qemu) while loading
# the QEMU driver, before it reads qemu.conf, and the driver fails to load ("Failed to
# parse group 'libvirt-qemu'") if they do not exist, even when qemu.conf says root.
getent group kvm >/dev/null 2>&1 || groupadd --system kvm
getent group libvirt-qemu >/dev/null 2>&1 || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null 2>&1 ||
    useradd --system --gid kvm --groups libvirt-qemu --home-dir /var/lib/libvirt \
            --no-create-home --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm || usermod -a -G kvm libvirt-qemu

# An unprivileged QEMU must be able to open /dev/kvm, as Debian's udev rule (root:kvm
# 0660) allows.  Where it cannot, libvirt 9 judges its cached QEMU capabilities stale
# and re-probes QEMU before every domain start: measured here, 51.6 s per start
# instead of 0.3 s, even for type='qemu' (TCG) domains that never use KVM.
if [ "$QEMU_USER" != root ] && [ -c /dev/kvm ]; then
    { chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; } || die "cannot give group kvm access to /dev/kvm"
fi

# --- directories the guests' files live in --------------------------------------------
# Each component of each DIR must be searchable by QEMU's user; libvirt chowns files
# but never directories.  Only the search bit is added, for "others".
reachable() { setpriv --reuid "$QEMU_USER" --regid "$QEMU_GROUP" --init-groups test -x "$1"; }
for dir in "$@"; do
    [ -d "$dir" ] || { mkdir -p "$dir" && chmod 0755 "$dir"; } || die "cannot create $dir"
    d="$(cd "$dir" && pwd -P)"
    while :; do
        if ! reachable "$d"; then
            chmod o+x "$d" || die "cannot make $d searchable by $QEMU_USER"
            say "made $d searchable by $QEMU_USER (o+x)"
        fi
        [ "$d" = / ] && break
        d="$(dirname "$d")"
    done
done

# --- qemu.conf ------------------------------------------------------------------------
# We own one marked block at the end of qemu.conf.  libvirt's parser takes the FIRST
# occurrence of a key, so an active line for a key we set is commented out first.
#   user, group         see the header.
#   dynamic_ownership   1 (libvirt chowns guest files to QEMU's user while it runs)
#                       unless QEMU runs as root.
#   remember_owner = 0  give files back to root:root on stop instead of recording the
#                       previous owner in trusted.* xattrs: Nebula's files belong to
#                       root, and stale xattrs (after a crash) block later starts.
#   security_driver = "none"
#                       no AppArmor/SELinux confinement here (DAC ownership still
#                       applies); stops libvirt probing for them.
#   namespaces = [ ]    no private mount namespace and /dev per QEMU: building it needs
#                       mount privileges a container often lacks.
BEGIN_MARK="# BEGIN nebula (ops/host/libvirt-up.sh)"
END_MARK="# END nebula"
KEYS="user group dynamic_ownership remember_owner security_driver namespaces"

wanted_block() {
    echo "$BEGIN_MARK"
    echo "user = \"$QEMU_USER\""
    echo "group = \"$QEMU_GROUP\""
    if [ "$QEMU_USER" = root ]; then echo 'dynamic_ownership = 0'; else echo 'dynamic_ownership = 1'; fi
    echo 'remember_owner = 0'
    echo 'security_driver = "none"'
    echo 'namespaces = [ ]'
    echo "$END_MARK"
}

[ -f "$QEMU_CONF" ] || : >"$QEMU_CONF"
tmp="$(mktemp "$QEMU_CONF.nebula.XXXXXX")"
awk -v b="$BEGIN_MARK" -v e="$END_MARK" -v keys="$KEYS" '
    BEGIN { n = split(keys, k, " "); for (i = 1; i <= n; i++) want[k[i]] = 1 }
    $0 == b { skip = 1; next }
    skip && $0 == e { skip = 0; next }
    skip { next }
    {
        key = $0
        sub(/^[ \t]*/, "", key); sub(/[ \t]*=.*/, "", key)
        if ($0 !~ /^[ \t]*#/ && $0 ~ /=/ && (key in want)) print "#" $0 "   # overridden by the nebula block below"
        else print
    }' "$QEMU_CONF" >"$tmp"
wanted_block >>"$tmp"
conf_changed=0
if cmp -s "$tmp" "$QEMU_CONF"; then
    rm -f "$tmp"
else
    chmod 600 "$tmp"
    mv "$tmp" "$QEMU_CONF"
    conf_changed=1
fi

# --- daemons --------------------------------------------------------------------------
# pid_of NAME: the pid of a running NAME (its pidfile, else /proc), or nothing.
# (No pgrep: procps is not on a minimal Debian.)
pid_of() {
    if [ -s "/run/$1.pid" ] && kill -0 "$(cat "/run/$1.pid")" 2>/dev/null &&
       [ "$(cat "/proc/$(cat "/run/$1.pid")/comm" 2>/dev/null)" = "$1" ]; then
        cat "/run/$1.pid"
        return 0
    fi
    for c in /proc/[0-9]*/comm; do
        [ "$(cat "$c" 2>/dev/null)" = "$1" ] && { p="${c#/proc/}"; echo "${p%/comm}"; return 0; }
    done
    return 0
}
answers() { virsh -c "$URI" version >/dev/null 2>&1; }
under_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# virtlogd writes QEMU's own log and the <serial><log file=...> console logs; without
# it every domain start fails with "Failed to connect socket ... virtlogd-sock".
if [ -z "$(pid_of virtlogd)" ] && ! under_systemd; then
    virtlogd -d || die "virtlogd failed to start"
fi

if [ "$conf_changed" = 1 ] && pid="$(pid_of libvirtd)" && [ -n "$pid" ]; then
    # A running libvirtd read the old qemu.conf; it rereads only when restarted.
    # Running guests survive: the new libvirtd reconnects to their QEMU processes.
    say "qemu.conf changed, restarting libvirtd (pid $pid)"
    if under_systemd; then
        systemctl restart libvirtd || die "systemctl restart libvirtd failed"
    else
        kill "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -0 "$pid" 2>/dev/null && die "libvirtd (pid $pid) did not exit for the restart"
    fi
fi

# Poll until libvirtd answers, starting it whenever none runs: the first start probes
# QEMU's capabilities, which takes a few seconds under TCG.
starts=0
deadline=$(( $(date +%s) + TIMEOUT ))
until answers; do
    if [ -z "$(pid_of libvirtd)" ]; then
        [ "$starts" -lt 3 ] || die "libvirtd keeps exiting right after start (see $LOG)"
        if under_systemd; then
            systemctl start libvirtd || die "systemctl start libvirtd failed"
        else
            # -d detaches from stderr, so warnings and errors go to a file.
            LIBVIRT_LOG_OUTPUTS="3:file:$LOG" libvirtd -d || die "libvirtd failed to start (see $LOG)"
        fi
        starts=$((starts + 1))
    fi
    [ "$(date +%s)" -lt "$deadline" ] ||
        die "libvirtd did not answer on $URI within ${TIMEOUT}s (see $LOG)"
    sleep 0.5
done
# Asking for the domain capabilities makes libvirt probe QEMU now (once, cached) rather
# than during the first guest's start.
virsh -c "$URI" domcapabilities --virttype qemu --arch x86_64 >/dev/null 2>&1 ||
    die "libvirtd answers but cannot drive qemu-system-x86_64 (see $LOG)"
# libvirt loads its nwfilters (clean-traffic, ...) from /etc/libvirt/nwfilter when it
# starts: those installed while it ran are defined now.
if [ -f /etc/libvirt/nwfilter/clean-traffic.xml ] &&
   ! virsh -c "$URI" nwfilter-list 2>/dev/null | grep -qw clean-traffic; then
    for _ in 1 2; do  # twice: a filter may refer to one defined after it
        for f in /etc/libvirt/nwfilter/*.xml; do virsh -c "$URI" nwfilter-define "$f" >/dev/null 2>&1 || true; done
    done
    say "defined libvirt's nwfilters from /etc/libvirt/nwfilter"
fi
echo "libvirt-up: $URI ready, $(virsh -c "$URI" version 2>/dev/null | sed -n 's/^Running hypervisor: //p'), QEMU runs as $QEMU_USER"
