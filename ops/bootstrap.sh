#!/bin/sh
# Prepare this machine for Nebula: the Debian packages it needs, a virtual
# environment in .venv, and the project installed into it (editable).
# Idempotent: a second run installs nothing new and takes a few seconds.
#
#   ops/bootstrap.sh            what running Nebula needs
#   ops/bootstrap.sh --test     that, plus what the test suite needs
set -eu
WITH_TESTS=0
[ "${1:-}" = "--test" ] && WITH_TESTS=1

cd "$(dirname "$0")/.."
VENV="${NEBULA_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

# Debian packages: the Python toolchain for packages that compile, libvirt's
# headers for libvirt-python, libvirtd + QEMU for compute nodes, the managed guest
# network's dnsmasq (DHCP, DNS; dhcp_release to forget a deleted guest's lease),
# iptables (libvirt's NAT, Nebula's host guard) and libvirt's nwfilters with ebtables
# (clean-traffic: no spoofing), ssh for `nebula instance ssh`, and what the nebula-tiny
# guest builder unpacks Debian's kernel and busybox with.
DEBS="python3 python3-venv python3-dev gcc pkg-config libvirt-dev \
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
dnsmasq-base dnsmasq-utils iptables ebtables libvirt-daemon-config-nwfilter openssh-client \
qemu-utils busybox-static cpio kmod zstd xz-utils"
# For the tests only: the libraries stock cloud-init runs on. cloud-init itself is
# unpacked, never installed (an installed cloud-init would run at this host's next boot).
TEST_DEBS="python3-requests python3-yaml python3-jinja2 python3-configobj python3-jsonpatch \
python3-jsonschema python3-netifaces python3-oauthlib python3-serial"
[ "$WITH_TESTS" = 1 ] && DEBS="$DEBS $TEST_DEBS"

missing=""
for p in $DEBS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: needs root to apt-get install:$missing" >&2
        exit 1
    fi
    echo "bootstrap: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Reinstall only when the project's metadata or its pinned versions changed since the
# last install. ops/constraints.txt pins every dependency to the versions tested.
stamp="$VENV/.nebula-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ops/constraints.txt -nt "$stamp" ]; then
    echo "bootstrap: installing nebula into $VENV"
    log="$VENV/pip-install.log"
    if ! { "$VENV/bin/pip" install --upgrade pip && "$VENV/bin/pip" install -c ops/constraints.txt -e '.[test]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 1
    fi
    touch "$stamp"
fi

# Debian's stock cloud-init, unpacked beside the venv, for the metadata contract test.
if [ "$WITH_TESTS" = 1 ] && [ ! -d "$VENV/cloud-init/usr/lib/python3/dist-packages/cloudinit" ]; then
    echo "bootstrap: unpacking Debian's cloud-init into $VENV/cloud-init"
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq cloud-init >/dev/null 2>&1) || {
        apt-get update -qq && (cd "$tmp" && apt-get download -qq cloud-init)
    }
    dpkg-deb -x "$tmp"/cloud-init_*.deb "$VENV/cloud-init"
    rm -rf "$tmp"
fi
