#!/usr/bin/env bash
# Build (once) the Debian bullseye root that holds the real Caffe 1.0 (python3-caffe, CPU build
# 1.0.0+git20180821.99bd997) used as the oracle by caffe2tf's tests and golden traces.
#
# Usage: scripts/build_caffe_root.sh [DIR]
#   DIR defaults to $CAFFE2TF_CAFFE_ROOT, else /var/cache/caffe2tf/bullseye-root.
#   Env: CAFFE2TF_DEBIAN_MIRROR (default http://deb.debian.org/debian).
#
# Properties:
#   - idempotent: if DIR already imports caffe (or carries the marker file written after a
#     successful build and still has the caffe package), nothing is done;
#   - atomic: the root is built in DIR.tmp and renamed to DIR only once `import caffe` works
#     inside it, so an interrupted build never leaves a half-built DIR behind;
#   - loud: a missing debootstrap, a non-root user or a failed debootstrap ends with a message
#     that says what to do, and a non-zero exit status.
# Needs root (debootstrap and chroot do). Takes about 75-120 s and ~1 GB on a fresh machine.
set -euo pipefail

DIR="${1:-${CAFFE2TF_CAFFE_ROOT:-/var/cache/caffe2tf/bullseye-root}}"
MIRROR="${CAFFE2TF_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MARKER=".caffe2tf-root-ok"
PKG_DIR="usr/lib/python3/dist-packages/caffe"

die() {
    echo "build_caffe_root: error: $*" >&2
    exit 1
}

imports_caffe() {
    # $1: a root directory. True when its python3 can import caffe.
    [ -f "$1/$PKG_DIR/__init__.py" ] || return 1
    chroot "$1" /usr/bin/python3 -c 'import caffe' >/dev/null 2>&1
}

unmount_under() {
    # Unmount anything an interrupted debootstrap left mounted under $1 (deepest first), so
    # that removing the half-built tree never reaches into /proc, /sys or a bind-mounted /dev.
    [ -r /proc/mounts ] || return 0
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" || true; done
}

# An existing but empty DIR (e.g. a pre-created cache folder) is built into: the final
# rename replaces an empty directory.
if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then
    if [ -f "$DIR/$MARKER" ] && [ -f "$DIR/$PKG_DIR/__init__.py" ]; then
        echo "build_caffe_root: $DIR is ready (marker present)"
        exit 0
    fi
    if [ "$(id -u)" = 0 ] && imports_caffe "$DIR"; then
        date -u +%Y-%m-%dT%H:%M:%SZ >"$DIR/$MARKER"
        echo "build_caffe_root: $DIR already imports caffe; marker written"
        exit 0
    fi
    die "$DIR exists but is not a working Caffe root (no '$PKG_DIR' or 'import caffe' fails).
Remove it or point CAFFE2TF_CAFFE_ROOT elsewhere, then run this script again."
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it); try: sudo $0 $*"
command -v debootstrap >/dev/null 2>&1 ||
    die "debootstrap not found. Install it first (Debian/Ubuntu: apt-get install -y debootstrap)."

TMP="$DIR.tmp"
mkdir -p "$(dirname "$DIR")" 2>/dev/null || die "cannot create $(dirname "$DIR")"
unmount_under "$TMP"
rm -rf "$TMP"
LOG="$(mktemp "${TMPDIR:-/tmp}/caffe2tf-debootstrap.XXXXXX.log")"
echo "build_caffe_root: debootstrap bullseye into $TMP (log: $LOG) ..."
start=$(date +%s)
if ! debootstrap --variant=minbase --include=python3-caffe,caffe bullseye "$TMP" "$MIRROR" \
    >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2 || true
    unmount_under "$TMP"
    rm -rf "$TMP"
    die "debootstrap failed (mirror $MIRROR; full log in $LOG). Network access to the Debian
mirror is needed; set CAFFE2TF_DEBIAN_MIRROR to use another mirror."
fi
# debootstrap may leave /proc etc. mounted on failure paths; we never mount anything ourselves.
imports_caffe "$TMP" || {
    chroot "$TMP" /usr/bin/python3 -c 'import caffe' >&2 || true
    die "the new root at $TMP does not import caffe (left there for inspection)"
}
# Free space we never use (apt caches); harmless if absent.
rm -rf "$TMP/var/cache/apt/archives/"*.deb
date -u +%Y-%m-%dT%H:%M:%SZ >"$TMP/$MARKER"
mv -T "$TMP" "$DIR"
rm -f "$LOG"
echo "build_caffe_root: built $DIR in $(( $(date +%s) - start )) s"
