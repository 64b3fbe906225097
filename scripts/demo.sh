#!/usr/bin/env bash
# The main job on a shipped default: install, then check the shipped snapshot
# of a processor whose driver forgot CR4.VMXE, and a clean one.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2 || exit 2
.venv/bin/vmxdbg check vmxdbg/examples/vmxon.vmxsnap.json
.venv/bin/vmxdbg check recordings/snapshots/skylake-cr4-vmxe-clear.vmxsnap.json
status=$?
echo "(exit status $status: 0 = every verdict ok, 1 = a check failed, 2 = bad input)"
