#!/usr/bin/env bash
# One command that sets caffe2tf up on a fresh Debian/Ubuntu machine (run as root, or with sudo
# available): system tools for the real-Caffe oracle, the package with its dev extras, and the
# Debian bullseye root holding Caffe 1.0 (cached outside the repo, built once, ~100 s).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "setup: installing debootstrap (needed to build the real-Caffe oracle root)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq debootstrap >/dev/null
fi

echo "setup: installing caffe2tf with its dev extras"
python3 -m pip install -q -e '.[dev]'

echo "setup: building (or reusing) the Caffe 1.0 oracle root"
$SUDO bash scripts/build_caffe_root.sh
echo "setup: done. Run the tests with: python3 -m pytest"
