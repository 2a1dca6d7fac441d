#!/bin/sh
# Build the nebula-tiny guest image: Debian's kernel plus a busybox initramfs whose
# /init (ops/guest/init) is a small cloud-init NoCloud client.  Direct kernel boot.
#
#   ops/guest/build-tiny.sh [OUT]      default: $OUT, else ${NEBULA_STATE_DIR:-.state}/images/nebula-tiny
#   FORCE=1 ops/guest/build-tiny.sh    rebuild even if OUT is complete (e.g. for a newer kernel)
#
# OUT receives vmlinuz, initrd.img (gzip'd cpio, newc) and manifest.json.
# Everything comes from Debian packages, fetched with `apt-get download` and
# unpacked with dpkg-deb (never installed): linux-image-amd64's versioned kernel
# and busybox-static.  The .debs are cached in OUT/../.cache/debs, so a rebuild
# needs no network.  Re-running with a complete OUT built by these same sources
# is a no-op that takes well under a second.
#
# Needs: apt-get, dpkg-deb, cpio, gzip, kmod (depmod), xz/zstd (only for kernels
# whose modules are compressed), python3 (manifest), flock.  Root is not needed
# unless the apt package lists are missing and must be fetched.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-${OUT:-${NEBULA_STATE_DIR:-.state}/images/nebula-tiny}}"
CMDLINE="console=ttyS0 quiet"
# Top-level modules; their dependencies are added in load order from modules.dep.
#   virtio_pci  the PCI transport every virtio device sits on (not a dependency of
#               the device drivers, so it must be named)
#   virtio_net, virtio_blk   NIC and disks
#   button, evdev            ACPI power button as an input device, for acpid
WANT_MODULES="virtio_pci virtio_net virtio_blk button evdev"

die() { echo "build-tiny: $*" >&2; exit 1; }
log() { echo "build-tiny: $*" >&2; }

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PARENT="$(dirname "$OUT")"
CACHE="$PARENT/.cache/debs"
mkdir -p "$CACHE"

# One builder at a time per output directory (tests may race to build).
exec 9>"$PARENT/.$(basename "$OUT").lock"
flock 9

# --- up to date? ---------------------------------------------------------------------
# The manifest records a hash of the builder's own sources; the image is current
# when that hash matches and every file still has the recorded size and sha256.
BUILDER_SHA="$(cat "$HERE/build-tiny.sh" "$HERE/init" "$HERE/udhcpc.script" "$HERE/acpi-poweroff" |
    sha256sum | cut -d' ' -f1)"
if [ "${FORCE:-0}" != 1 ] && [ -f "$OUT/manifest.json" ] &&
   python3 - "$OUT" "$BUILDER_SHA" <<'EOF'
import hashlib, json, os, sys
out, builder = sys.argv[1], sys.argv[2]
try:
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["builder_sha256"] == builder
    for name, f in m["files"].items():
        p = os.path.join(out, name)
        assert os.path.getsize(p) == f["size"]
        assert hashlib.sha256(open(p, "rb").read()).hexdigest() == f["sha256"]
except (OSError, ValueError, KeyError, AssertionError):
    sys.exit(1)
EOF
then
    log "up to date: $OUT"
    exit 0
fi

# --- packages -------------------------------------------------------------------------------
apt_ready=0
ensure_apt_lists() {
    [ "$apt_ready" = 1 ] && return 0
    if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || die "apt package lists missing; run 'apt-get update' as root"
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
    fi
    apt_ready=1
}

candidate_version() { # package -> the version apt would download
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^  Candidate: //p' | grep -v '^(none)$' || true
}

# fetch_deb PACKAGE -> prints the path of the cached .deb, downloading it if needed.
# Falls back to the newest cached .deb of that package when apt knows nothing
# (offline rebuild after the package lists were cleaned).
# shellcheck disable=SC2012
fetch_deb() {
    ver="$(candidate_version "$1")"
    if [ -z "$ver" ]; then
        cached="$(ls "$CACHE/$1"_*.deb 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$cached" ] || die "cannot resolve $1 (no apt candidate, nothing cached)"
        echo "$cached"
        return 0
    fi
    # apt-get download names files PKG_VERSION_ARCH.deb with ':' written as %3a.
    file="$CACHE/${1}_$(echo "$ver" | sed 's/:/%3a/g')_amd64.deb"
    if [ ! -s "$file" ]; then
        log "downloading $1=$ver"
        dl="$(mktemp -d "$CACHE/.dl.XXXXXX")"
        # As root apt drops to the _apt user, which cannot write our cache dir.
        sandbox=""; [ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"
        # shellcheck disable=SC2086
        (cd "$dl" && apt-get -qq $sandbox download "$1=$ver") || { rm -rf "$dl"; die "apt-get download $1=$ver failed"; }
        mv "$dl"/*.deb "$file"
        rm -rf "$dl"
    fi
    echo "$file"
}

ensure_apt_lists
# linux-image-amd64 is a metapackage; its Depends names the real, versioned kernel.
KPKG="$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1)"
# shellcheck disable=SC2012
if [ -z "$KPKG" ]; then
    KPKG="$(ls "$CACHE"/linux-image-[0-9]*.deb 2>/dev/null | sort -V | tail -n 1 | sed 's|.*/||; s|_.*||')"
fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64"
KDEB="$(fetch_deb "$KPKG")"
BBDEB="$(fetch_deb busybox-static)"

# --- unpack ----------------------------------------------------------------------------------
WORK="$(mktemp -d "$PARENT/.build-tiny.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT INT TERM
log "unpacking $(basename "$KDEB") and $(basename "$BBDEB")"
dpkg-deb -x "$KDEB" "$WORK/kernel"
dpkg-deb -x "$BBDEB" "$WORK/busybox"
# shellcheck disable=SC2012  # a name Debian chose, e.g. 6.1.0-56-amd64
KVER="$(ls "$WORK/kernel/lib/modules" | head -n 1)"
[ -f "$WORK/kernel/boot/vmlinuz-$KVER" ] || die "no vmlinuz-$KVER in $KDEB"
BB="$WORK/busybox/bin/busybox"
[ -x "$BB" ] || die "no bin/busybox in $BBDEB"

# --- initramfs tree ------------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT/bin" "$ROOT/sbin" "$ROOT/etc/acpi/PWRF" "$ROOT/lib/modules" \
         "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/run" "$ROOT/tmp" "$ROOT/root" \
         "$ROOT/var/log"
chmod 1777 "$ROOT/tmp"
cp "$BB" "$ROOT/bin/busybox"
for applet in $("$BB" --list); do
    case "$applet" in busybox|init|linuxrc) continue ;; esac
    ln -s busybox "$ROOT/bin/$applet"
done
install -m 0755 "$HERE/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
install -m 0755 "$HERE/acpi-poweroff" "$ROOT/etc/acpi/PWRF/00000080"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
printf 'nebula-tiny\n' >"$ROOT/etc/hostname"

# Modules: busybox insmod takes plain .ko files and knows nothing of dependencies.
# The package ships no modules.dep (its postinst runs depmod), so depmod writes one
# for the unpacked tree; for each wanted module it lists every dependency, the one
# to load first last (as modprobe reads it).  Each module is stored decompressed as
# /lib/modules/NAME.ko and /lib/modules/load-order lists them in load order, e.g.
# virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci ...
KROOT="$WORK/kernel/lib/modules/$KVER"
DEPMOD="$(command -v depmod || echo /sbin/depmod)"
"$DEPMOD" -b "$WORK/kernel" "$KVER" || die "depmod failed on $KPKG"

modname() { # path of a .ko -> module name (dashes as underscores)
    n="${1##*/}"; n="${n%%.ko*}"; echo "$n" | tr - _
}

LOADED=" "
install_module() { # PATH relative to KROOT: store it, unless already stored
    n="$(modname "$1")"
    case "$LOADED" in *" $n "*) return 0 ;; esac
    case "$1" in
        *.ko.xz)  xz -dc "$KROOT/$1" ;;
        *.ko.zst) zstd -qdc "$KROOT/$1" ;;
        *.ko.gz)  gzip -dc "$KROOT/$1" ;;
        *)        cat "$KROOT/$1" ;;
    esac >"$ROOT/lib/modules/$n.ko" || die "cannot unpack $1"
    LOADED="$LOADED$n "
    echo "$n" >>"$ROOT/lib/modules/load-order"
}

add_module() { # NAME: its dependencies in load order, then itself
    # shellcheck disable=SC2046  # one modules.dep line, split into paths on purpose
    set -- $(awk -v want="$1" '{
        p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n)
        if (n == want) { print; exit }
    }' "$KROOT/modules.dep")
    if [ "$#" = 0 ]; then
        die "module $1 is not in $KPKG's modules.dep (built in? then drop it from WANT_MODULES)"
    fi
    main="${1%:}"; shift
    order=""
    for dep in "$@"; do order="$dep $order"; done
    for dep in $order; do install_module "$dep"; done
    install_module "$main"
}
: >"$ROOT/lib/modules/load-order"
for m in $WANT_MODULES; do add_module "$m"; done
log "kernel $KVER, modules: $(tr '\n' ' ' <"$ROOT/lib/modules/load-order")"

# Reproducible archive: sorted names, fixed mtimes, root-owned, no inode numbers.
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
    gzip -9n >"$WORK/initrd.img"

# --- output ------------------------------------------------------------------------------------
STAGE="$WORK/out"
mkdir -p "$STAGE"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$STAGE/vmlinuz"
mv "$WORK/initrd.img" "$STAGE/initrd.img"
python3 - "$STAGE" "$KVER" "$KPKG=$(dpkg-deb -f "$KDEB" Version)" \
    "busybox-static=$(dpkg-deb -f "$BBDEB" Version)" "$CMDLINE" "$BUILDER_SHA" \
    "$ROOT/lib/modules/load-order" <<'EOF'
import hashlib, json, os, sys
stage, kver, kpkg, bbpkg, cmdline, builder, order = sys.argv[1:]
def describe(name):
    data = open(os.path.join(stage, name), "rb").read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
manifest = {
    "name": "nebula-tiny",
    "format": "direct-kernel",
    "kernel_version": kver,
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "cmdline": cmdline,
    "files": {name: describe(name) for name in ("vmlinuz", "initrd.img")},
    "packages": [kpkg, bbpkg],
    "modules": open(order).read().split(),
    "builder_sha256": builder,
}
with open(os.path.join(stage, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
EOF
rm -rf "$OUT"
mv "$STAGE" "$OUT"
log "built $OUT ($(du -sh "$OUT" | cut -f1))"
