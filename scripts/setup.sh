#!/usr/bin/env bash
# Install what vmxdbg and its tests need on a fresh Debian machine:
# Bochs + nasm from Debian's packages (when root), and a virtualenv (.venv)
# with vmxdbg and its test dependencies. Idempotent; prints what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

debs="bochs bochsbios vgabios bochs-term nasm python3-venv"
# Linux KVM under Bochs (trace --hypervisor linux-kvm, docs/kvm.md): the kernel and its kvm modules,
# busybox, the ISO tools and gcc for the image's static test program
debs="$debs linux-image-amd64 busybox-static cpio isolinux syslinux-common genisoimage gcc libc6-dev"
missing=""
for p in $debs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: not root, cannot install:$missing (live Bochs and KVM tests will be skipped and say so)"
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
echo "setup: vmxdbg installed in .venv ($(.venv/bin/python --version))"
