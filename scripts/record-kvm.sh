#!/usr/bin/env bash
# Make the KVM recordings in recordings/kvm/ from real runs: Debian's kernel with its
# unmodified kvm_intel under Bochs (docs/kvm.md), traced through every VMX instruction on
# every processor, one fault injected through the debugger per recording, and the expected
# report (the trace replayed) written next to each. The first run builds the image and boots it
# from its CD once, saving the booted machine next to it (minutes); every later run restores
# that machine (seconds). VMXDBG_TRACE_ARGS adds options to each run (e.g. --cold-boot).
set -euo pipefail
cd "$(dirname "$0")/.."
VMXDBG=${VMXDBG:-python -m vmxdbg}
out=recordings/kvm
mkdir -p "$out"
record() {  # NAME CPUS [KNOB...]
  local name=$1 cpus=$2; shift 2
  local knobs=()
  for k in "$@"; do knobs+=(--knob "$k"); done
  rm -f "$out/$name.vmxrec.jsonl"
  $VMXDBG trace --bochs --hypervisor linux-kvm --cpus "$cpus" "${knobs[@]}" ${VMXDBG_TRACE_ARGS:-} \
    --record "$out/$name.vmxrec.jsonl" > /dev/null || true
  $VMXDBG trace --replay "$out/$name.vmxrec.jsonl" --format json > "$out/$name.expected.json" || true
  echo "recorded $out/$name.vmxrec.jsonl ($cpus cpus${*:+, knobs: $*})"
}
if [ $# -gt 0 ]; then record "$@"; exit; fi
record healthy-2cpu 2
record vmxe-clear-cpu1 2 1:vmxe_clear
record wrong-revision-cpu1 2 1:wrong_revision
record pin-reserved-cpu1 2 1:pin_reserved
record rflags-bit1-cpu1 2 1:rflags_bit1
record fs-base-noncanonical-cpu0 2 0:fs_base_noncanonical
