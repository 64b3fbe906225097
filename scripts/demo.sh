#!/usr/bin/env bash
# The main job on a shipped default: boot the bundled test hypervisor under a
# live Bochs on 4 cores with one core broken (CR4.VMXE left clear on cpu 2),
# step every core through VMXON / VMCLEAR / VMPTRLD / VMLAUNCH, and print the
# table of predicted vs actual outcomes. Installs Bochs where it can (root).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2 || exit 2
if ! command -v bochs-bin >/dev/null || ! command -v nasm >/dev/null; then
  echo "demo: Bochs or nasm is missing and could not be installed (not root?);" \
       "showing a recorded Bochs trace instead" >&2
  exec .venv/bin/vmxdbg trace --replay recordings/bochs/cr4-vmxe-clear-cpu1.vmxrec.jsonl
fi
.venv/bin/vmxdbg trace --bochs --cpus 4 --knob 2:vmxe_clear "$@"
status=$?
echo "(exit status $status: 0 = every prediction right and every instruction ok, 1 = something failed)"
