#!/usr/bin/env bash
# Make the Bochs recordings in recordings/bochs/ from real runs: boot the test
# hypervisor under Bochs with one knob, trace every core through its VMX
# instructions, record the session, and write the expected report (the trace
# replayed) next to it. Re-run after changing the test hypervisor; review the diff.
set -euo pipefail
cd "$(dirname "$0")/.."
VMXDBG=${VMXDBG:-python -m vmxdbg}
out=recordings/bochs
mkdir -p "$out"
record() {  # NAME CPUS [KNOB...]
  local name=$1 cpus=$2; shift 2
  local knobs=()
  for k in "$@"; do knobs+=(--knob "$k"); done
  rm -f "$out/$name.vmxrec.jsonl"
  $VMXDBG trace --bochs --cpus "$cpus" "${knobs[@]}" --record "$out/$name.vmxrec.jsonl" > /dev/null || true
  $VMXDBG trace --replay "$out/$name.vmxrec.jsonl" --format json > "$out/$name.expected.json" || true
  echo "recorded $out/$name.vmxrec.jsonl ($cpus cpus${*:+, knobs: $*})"
}
record healthy-2cpu 2
record healthy-4cpu 4
record cr4-vmxe-clear-cpu1 2 1:vmxe_clear
record wrong-revision-cpu1 2 1:wrong_revision
record misaligned-vmxon-cpu1 2 1:misaligned
record too-wide-vmxon-cpu1 2 1:too_wide
record region-bit31-cpu1 2 1:bit31
record shared-vmxon-region 2 1:share_vmxon=0
record vmcs-wrong-revision-cpu1 2 1:vmcs_wrong_revision
record pin-controls-all-ones-cpu3 4 3:override=0x4000:0xffffffff
record link-pointer-zero-cpu1 2 1:override=0x2800:0
record guest-rip-noncanonical-cpu1 2 1:override=0x681e:0x8000000000000000
