"""Differential test: mutated VMCS states fed to Bochs, vmxdbg's prediction against what Bochs did.

Each mutation breaks (or, for the rows expecting `ok`, bends within the
rules) one thing in the VMCS of one processor of the test hypervisor,
through its knobs: `override=ENC:VAL` (VMWRITE just before VMLAUNCH) and
`msr_load=MSR:VAL[:HI]` (a VM-entry MSR-load list). Up to seven mutations
share one Bochs boot, each on its own processor, and processor 0 stays
healthy. For every mutation:

- vmxdbg's prediction at the VMLAUNCH is what the mutation is about (its
  `expect` prefix is among the possible outcomes; `ok` rows: only `ok`), so
  a mutation that stops breaking what it names fails here;
- what Bochs did is among the predicted possible outcomes, or a deviation of
  Bochs 2.7 from the SDM listed in structs/deviations.yaml explains it;
- processor 0's VMLAUNCH was predicted `ok` and succeeded.

Only VMLAUNCH is stepped and checked: the mutations change nothing before it,
and the other instructions are checked by the recordings and
tests/test_minihv_bochs.py. That keeps a boot of 8 processors near 2 s.

`python tests/test_differential_bochs.py` prints the table (mutation,
predicted, Bochs, verdict) as Markdown.
"""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

from vmxdbg.hypervisors.minihv import knobs as minihv_knobs  # noqa: E402

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not shutil.which("bochs-bin"),
                       reason="bochs-bin not installed (Debian: apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not shutil.which("nasm"), reason="nasm not installed (Debian: apt-get install nasm)"),
]

# What minihv writes on Bochs 2.7's corei7_skylake_x (its "vmcs written" and "cr0=" lines):
# controls adjusted with the TRUE capability MSRs, CR0 = PG|NE|ET|PE.
CR0 = 0x80000031
PROC = 0x04006172
EXIT = 0x00036FFB
ENTRY = 0x000013FB
NC = 0x8000000000000000        # not canonical for any linear-address width
SECONDARY = PROC | 1 << 31
PER_BOOT = 7                   # processors 1-7 mutated, 0 healthy (minihv runs on up to 8)


@dataclass(frozen=True)
class Mutation:
    """One broken (or bent) VMCS state on one processor. In `knobs`, {vmxon} and {vmcs}
    stand for that processor's VMXON region and VMCS."""

    name: str
    group: str                  # ctl (error 7), host (error 8), guest (exit 33), msr (exit 34)
    knobs: Tuple[str, ...]
    expect: str                 # prefix of the outcome vmxdbg must predict, or "ok"

    def specs(self, cpu: int) -> List[str]:
        base = minihv_knobs.L["PERCPU_BASE"] + cpu * minihv_knobs.L["PERCPU_STRIDE"]
        return [f"{cpu}:" + k.format(vmxon=hex(base + minihv_knobs.L["PC_VMXON"]),
                                     vmcs=hex(base + minihv_knobs.L["PC_VMCS"])) for k in self.knobs]


def M(name: str, group: str, expect: str, *knobs: str) -> Mutation:
    return Mutation(name, group, tuple(knobs), expect)


def ov(encoding: int, value: int) -> str:
    return f"override={encoding:#x}:{value:#x}"


V7, V8, E33, E34 = "VMfailValid:7", "VMfailValid:8", "entry-fail:33:0", "entry-fail:34"
MUTATIONS: Tuple[Mutation, ...] = (
    # ---- VMX controls: VMfailValid(7), Vol.3C 27.2.1 (SDM 325462-080US, 2023)
    M("pin-based: reserved bits set", "ctl", V7, ov(0x4000, 0xFFFFFFFF)),
    M("pin-based: default-1 bits clear", "ctl", V7, ov(0x4000, 0)),
    M("primary processor-based: default-1 bits clear", "ctl", V7, ov(0x4002, 0)),
    M("virtual NMIs without NMI exiting", "ctl", V7, ov(0x4000, 0x36)),
    M("posted interrupts without virtual-interrupt delivery", "ctl", V7, ov(0x4000, 0x96)),
    M("save preemption timer without the timer", "ctl", V7, ov(0x400C, EXIT | 1 << 22)),
    M("CR3-target count 5", "ctl", V7, ov(0x400A, 5)),
    M("I/O bitmap A not page aligned", "ctl", V7, ov(0x4002, PROC | 1 << 25), ov(0x2000, 0x1234)),
    M("MSR bitmap not page aligned", "ctl", V7, ov(0x4002, PROC | 1 << 28), ov(0x2004, 0x1234)),
    M("TPR shadow: virtual-APIC page not aligned", "ctl", V7, ov(0x4002, PROC | 1 << 21), ov(0x2012, 0x200100)),
    M("TPR shadow: threshold bits 31:4 set", "ctl", V7, ov(0x4002, PROC | 1 << 21), ov(0x2012, 0x200000),
      ov(0x401C, 0x10)),
    M("secondary controls: every bit set", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0xFFFFFFFF)),
    M("unrestricted guest without EPT", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0x80)),
    M("EPT pointer: walk length 1", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0x2), ov(0x201A, 0x200006)),
    M("enable VPID with VPID 0", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0x20), ov(0x0, 0)),
    M("APIC-register virtualization without TPR shadow", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0x100)),
    M("virtual-interrupt delivery without external-interrupt exiting", "ctl", V7,
      ov(0x4002, SECONDARY | 1 << 21), ov(0x2012, 0x200000), ov(0x401E, 0x200)),
    M("PML without EPT", "ctl", V7, ov(0x4002, SECONDARY), ov(0x401E, 0x20000)),
    M("VM-exit MSR-store area not 16-byte aligned", "ctl", V7, ov(0x400E, 1), ov(0x2006, 0x200008)),
    M("VM-exit MSR-load area not 16-byte aligned", "ctl", V7, ov(0x4010, 1), ov(0x2008, 0x200004)),
    M("VM-entry MSR-load area not 16-byte aligned", "ctl", V7, ov(0x4014, 1), ov(0x200A, 0x200004)),
    M("VM-entry MSR-load area beyond MAXPHYADDR", "ctl", V7, ov(0x4014, 1), ov(0x200A, 1 << 40)),
    M("entry: load BNDCFGS (not allowed)", "ctl", V7, ov(0x4012, ENTRY | 1 << 16)),
    M("entry to SMM outside SMM", "ctl", V7, ov(0x4012, ENTRY | 1 << 10)),
    M("deactivate dual-monitor treatment outside SMM", "ctl", V7, ov(0x4012, ENTRY | 1 << 11)),
    M("inject: reserved interruption type 1", "ctl", V7, ov(0x4016, 0x80000120)),
    M("inject: NMI type with vector 3", "ctl", V7, ov(0x4016, 0x80000203)),
    M("inject: #PF without its error code", "ctl", V7, ov(0x4016, 0x8000030E)),
    M("inject: #UD with an error code", "ctl", V7, ov(0x4016, 0x80000B06)),
    M("inject: reserved bits 30:12", "ctl", V7, ov(0x4016, 0x80001020)),
    M("inject: software interrupt, length 0 (IA32_VMX_MISC[30] allows it)", "ctl", "ok",
      ov(0x4016, 0x80000480), ov(0x401A, 0)),
    # ---- host state: VMfailValid(8), Vol.3C 27.2.2-27.2.4
    M("host CR0 = 0", "host", V8, ov(0x6C00, 0)),
    M("host CR4.VMXE clear", "host", V8, ov(0x6C04, 0x20)),
    M("host CR4.PAE clear with a 64-bit host", "host", V8, ov(0x6C04, 0x2000)),
    M("host CR3 beyond MAXPHYADDR", "host", V8, ov(0x6C02, 0x200000010000)),
    M("host CS selector 0", "host", V8, ov(0xC02, 0)),
    M("host TR selector 0", "host", V8, ov(0xC0C, 0)),
    M("host SS selector RPL 3", "host", V8, ov(0xC04, 0x13)),
    M("host DS selector TI set", "host", V8, ov(0xC06, 0x14)),
    M("host SS selector 0 with a 64-bit host (allowed)", "host", "ok", ov(0xC04, 0)),
    M("host FS base not canonical", "host", V8, ov(0x6C06, NC)),
    M("host GDTR base not canonical", "host", V8, ov(0x6C0C, NC)),
    M("host TR base not canonical", "host", V8, ov(0x6C0A, NC)),
    M("host SYSENTER_ESP not canonical", "host", V8, ov(0x6C10, NC)),
    M("host RIP not canonical", "host", V8, ov(0x6C16, NC)),
    M("host address-space size 0 in IA-32e mode", "host", V8, ov(0x400C, EXIT & ~(1 << 9))),
    M("host PAT entry type 2 (load PAT)", "host", V8, ov(0x400C, EXIT | 1 << 19), ov(0x2C00, 0x0202020202020202)),
    M("host EFER.LMA clear with a 64-bit host (load EFER)", "host", V8, ov(0x400C, EXIT | 1 << 21),
      ov(0x2C02, 0x101)),
    M("host PERF_GLOBAL_CTRL bit 63 (load PERF_GLOBAL_CTRL)", "host", V8, ov(0x400C, EXIT | 1 << 12),
      ov(0x2C04, NC)),
    # ---- guest state: exit reason 33, Vol.3C 27.3.1
    M("guest CR0.PE clear", "guest", E33, ov(0x6800, CR0 & ~1)),
    M("guest CR0.NW without CD (not checked on entry)", "guest", "ok", ov(0x6800, CR0 | 1 << 29)),
    M("guest CR4.VMXE clear", "guest", E33, ov(0x6804, 0x20)),
    M("guest CR4.PAE clear in IA-32e mode", "guest", E33, ov(0x6804, 0x2000)),
    M("guest CR3 beyond MAXPHYADDR", "guest", E33, ov(0x6802, 0x200000010000)),
    M("guest DR7 bits 63:32 (load debug controls)", "guest", E33, ov(0x4012, ENTRY | 1 << 2),
      ov(0x681A, 0x100000400)),
    M("guest DEBUGCTL reserved bits (load debug controls)", "guest", E33, ov(0x4012, ENTRY | 1 << 2),
      ov(0x2802, 0xFFFFFFFF00000000)),
    M("guest PAT entry type 2 (load PAT)", "guest", E33, ov(0x4012, ENTRY | 1 << 14),
      ov(0x2804, 0x0202020202020202)),
    M("guest EFER.LMA clear in IA-32e mode (load EFER)", "guest", E33, ov(0x4012, ENTRY | 1 << 15),
      ov(0x2806, 0x100)),
    M("guest EFER reserved bit 1 (load EFER)", "guest", E33, ov(0x4012, ENTRY | 1 << 15), ov(0x2806, 0x503)),
    M("guest PERF_GLOBAL_CTRL bit 63 (load PERF_GLOBAL_CTRL)", "guest", E33, ov(0x4012, ENTRY | 1 << 13),
      ov(0x2808, NC)),
    M("guest SYSENTER_ESP not canonical", "guest", E33, ov(0x6824, NC)),
    M("guest SYSENTER_EIP not canonical", "guest", E33, ov(0x6826, NC)),
    M("IA-32e mode guest 0: PAE paging, the PML4 read as PDPTEs", "guest", "entry-fail:33:2",
      ov(0x4012, ENTRY & ~(1 << 9))),
    M("guest RIP not canonical", "guest", E33, ov(0x681E, NC)),
    M("guest RFLAGS bit 1 clear", "guest", E33, ov(0x6820, 0)),
    M("guest RFLAGS reserved bit 15", "guest", E33, ov(0x6820, 0x8002)),
    M("guest RFLAGS.VM in IA-32e mode", "guest", E33, ov(0x6820, 0x20002)),
    M("inject external interrupt with RFLAGS.IF 0", "guest", E33, ov(0x4016, 0x80000020)),
    M("guest TR unusable", "guest", E33, ov(0x4822, 0x1008B)),
    M("guest TR 16-bit busy TSS in IA-32e mode", "guest", E33, ov(0x4822, 0x83)),
    M("guest TR selector TI set", "guest", E33, ov(0x80E, 0x24)),
    M("guest TR G=1 with limit 0x67", "guest", E33, ov(0x4822, 0x808B)),
    M("guest CS data-segment type", "guest", E33, ov(0x4816, 0xA093)),
    M("guest CS not accessed", "guest", E33, ov(0x4816, 0xA09A)),
    M("guest CS not present", "guest", E33, ov(0x4816, 0xA01B)),
    M("guest CS L=1 and D/B=1", "guest", E33, ov(0x4816, 0xE09B)),
    M("guest CS access-rights bits 11:8", "guest", E33, ov(0x4816, 0xA19B)),
    M("guest CS G=0 with limit 0xFFFFFFFF", "guest", E33, ov(0x4816, 0x209B)),
    M("guest CS base bits 63:32", "guest", E33, ov(0x6808, 0x100000000)),
    M("guest SS DPL 3", "guest", E33, ov(0x4818, 0xC0F3)),
    M("guest SS read-only data", "guest", E33, ov(0x4818, 0xC091)),
    M("guest SS selector RPL 3", "guest", E33, ov(0x804, 0x13)),
    M("guest SS unusable in a 64-bit guest (allowed)", "guest", "ok", ov(0x4818, 0x10000)),
    M("guest DS execute-only code", "guest", E33, ov(0x481A, 0xC099)),
    M("guest DS not accessed", "guest", E33, ov(0x481A, 0xC092)),
    M("guest DS unusable (allowed)", "guest", "ok", ov(0x481A, 0x10000)),
    M("guest ES system descriptor", "guest", E33, ov(0x4814, 0xC083)),
    M("guest ES base bits 63:32", "guest", E33, ov(0x6806, 0x100000000)),
    M("guest FS base not canonical", "guest", E33, ov(0x680E, NC)),
    M("guest GS unusable, base not canonical", "guest", E33, ov(0x481E, 0x10000), ov(0x6810, NC)),
    M("guest LDTR usable, type 3", "guest", E33, ov(0x4820, 0x83)),
    M("guest LDTR unusable, base not canonical (allowed)", "guest", "ok", ov(0x6812, NC)),
    M("guest GDTR limit bits 31:16", "guest", E33, ov(0x4810, 0x10000)),
    M("guest IDTR limit bits 31:16", "guest", E33, ov(0x4812, 0x10000)),
    M("guest IDTR base not canonical", "guest", E33, ov(0x6818, NC)),
    M("guest activity state 4", "guest", E33, ov(0x4826, 4)),
    M("inject #UD into the HLT activity state", "guest", E33, ov(0x4826, 1), ov(0x4016, 0x80000306)),
    M("interruptibility: reserved bit 5", "guest", E33, ov(0x4824, 0x20)),
    M("interruptibility: STI and MOV SS blocking", "guest", E33, ov(0x4824, 3), ov(0x6820, 0x202)),
    M("interruptibility: STI blocking with RFLAGS.IF 0", "guest", E33, ov(0x4824, 1)),
    M("interruptibility: enclave bit without SGX", "guest", E33, ov(0x4824, 0x10)),
    M("inject external interrupt under STI blocking", "guest", E33, ov(0x4016, 0x80000020), ov(0x4824, 1),
      ov(0x6820, 0x202)),
    M("inject NMI under STI blocking", "guest", "entry-fail:33", ov(0x4016, 0x80000202), ov(0x4824, 1),
      ov(0x6820, 0x202)),
    M("pending debug exceptions: reserved bit 4", "guest", E33, ov(0x6822, 0x10)),
    M("pending debug exceptions: RTM bit 16 without RTM", "guest", E33, ov(0x6822, 0x10000)),
    M("pending debug exceptions: BS clear, TF 1, STI blocking", "guest", E33, ov(0x4824, 1), ov(0x6820, 0x302)),
    M("pending debug exceptions: BS set, TF 0, STI blocking", "guest", E33, ov(0x4824, 1), ov(0x6820, 0x202),
      ov(0x6822, 0x4000)),
    M("VMCS link pointer 0", "guest", "entry-fail:33:4", ov(0x2800, 0)),
    M("VMCS link pointer not 4 KiB aligned", "guest", "entry-fail:33:4", ov(0x2800, 0x123)),
    M("VMCS link pointer to a zeroed page (revision id 0)", "guest", "entry-fail:33:4", ov(0x2800, 0x200000)),
    M("VMCS link pointer = the current VMCS", "guest", "entry-fail:33:4", "override=0x2800:{vmcs}"),
    M("VMCS link pointer = the VMXON region (right revision id: allowed)", "guest", "ok",
      "override=0x2800:{vmxon}"),
    # ---- MSR loading: exit reason 34, Vol.3C 27.4 (qualification = the failing entry)
    M("MSR load: x2APIC TPR (0x808)", "msr", "entry-fail:34:1", "msr_load=0x808:0"),
    M("MSR load: entry 2 with bits 63:32 set", "msr", "entry-fail:34:2", "msr_load=0x174:0x8",
      "msr_load=0x174:0x8:1"),
    M("MSR load: IA32_SMM_MONITOR_CTL outside SMM", "msr", "entry-fail:34:1", "msr_load=0x9b:0"),
    M("MSR load: IA32_FS_BASE", "msr", "entry-fail:34:1", "msr_load=0xc0000100:0"),
    M("MSR load: IA32_BIOS_UPDT_TRIG (model-specific)", "msr", "entry-fail:34:1", "msr_load=0x79:0"),
    M("MSR load: entry 3 sets EFER reserved bit 1", "msr", "entry-fail:34:3", "msr_load=0x174:0x8",
      "msr_load=0x175:0", "msr_load=0xc0000080:0xd03"),
    M("MSR load: IA32_VMX_BASIC (read-only)", "msr", "entry-fail:34:1", "msr_load=0x480:0"),
    M("MSR load: locked IA32_FEATURE_CONTROL", "msr", "entry-fail:34:1", "msr_load=0x3a:0x5"),
    M("MSR load: LSTAR not canonical", "msr", "entry-fail:34:1", "msr_load=0xc0000082:0x800000000000"),
    M("MSR load: PAT entry type 2", "msr", "entry-fail:34:1", "msr_load=0x277:0x0007040600070402"),
    M("MSR load: EFER.LME cleared while paging", "msr", "entry-fail:34:1", "msr_load=0xc0000080:0x801"),
    M("MSR load: an MSR that does not exist", "msr", "entry-fail:34:1", "msr_load=0x12345:0"),
    M("MSR load: SYSENTER_CS (allowed)", "msr", "ok", "msr_load=0x174:0x8"),
)
BATCHES: Tuple[Tuple[Mutation, ...], ...] = tuple(MUTATIONS[i:i + PER_BOOT]
                                                  for i in range(0, len(MUTATIONS), PER_BOOT))
_RUNS: Dict[int, object] = {}


def run_batch(index: int):  # type: ignore[no-untyped-def]
    """The trace of one boot (cached): processor k + 1 runs BATCHES[index][k]; StepResults."""
    if index not in _RUNS:
        from vmxdbg.hypervisors.minihv.demo import bochs_trace
        batch = BATCHES[index]
        specs = [s for cpu, m in enumerate(batch, 1) for s in m.specs(cpu)]
        _RUNS[index] = bochs_trace(cpus=len(batch) + 1, knobs=specs, timeout=30, instructions=("vmlaunch",))
    return _RUNS[index]


def verdict_word(r) -> str:  # type: ignore[no-untyped-def]
    """`ok`, `deviation` (a known one) or `MISMATCH` for one stop."""
    return "ok" if r.match else "deviation" if r.deviations else "MISMATCH"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


CASES = [pytest.param(b, k, id=f"{m.group}-{_slug(m.name)}") for b, batch in enumerate(BATCHES)
         for k, m in enumerate(batch)]


def test_the_set_is_broad() -> None:
    groups = {g: sum(m.group == g for m in MUTATIONS) for g in ("ctl", "host", "guest", "msr")}
    assert len(MUTATIONS) >= 40 and min(groups.values()) >= 8, groups
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
    assert all(len(m.knobs) <= minihv_knobs.MAX_OVERRIDES for m in MUTATIONS)


@pytest.mark.parametrize("batch, slot", CASES)
def test_prediction_equals_what_bochs_did(batch: int, slot: int) -> None:
    mutation = BATCHES[batch][slot]
    results = run_batch(batch)
    cpu = slot + 1
    assert not [r for r in results if r.verdict is None], "a planned stop was missed"
    mine = [r for r in results if r.cpu == cpu]
    launch = [r for r in mine if r.instruction == "vmlaunch"]
    assert len(mine) == len(launch) == 1, [(r.instruction, r.actual) for r in mine]
    v, actual = launch[0].verdict, launch[0].actual
    if mutation.expect == "ok":
        assert v.possible == ["ok"], f"the mutation breaks something: {v.possible} {_failing(v)}"
    else:
        assert any(p.startswith(mutation.expect) for p in v.possible), \
            f"vmxdbg predicts {v.possible}, not the {mutation.expect} this mutation is about ({_failing(v)})"
    assert actual in v.possible or launch[0].deviations, \
        f"vmxdbg predicted {v.possible} ({_failing(v)}), Bochs did {actual}; Bochs says {launch[0].log}"
    # the healthy processor of this boot
    assert [(r.instruction, r.actual, r.match) for r in results if r.cpu == 0] == [("vmlaunch", "ok", True)]


def _failing(v) -> List[str]:  # type: ignore[no-untyped-def]
    return [f.id for f in v.findings if f.status in ("fail", "unknown") and not f.advisory]


def table(batches: Sequence[int] = ()) -> str:
    """The mutation table as Markdown (boots Bochs for every batch)."""
    rows = ["| # | mutation (one processor) | predicted | Bochs 2.7 | verdict | rules |", "|---|---|---|---|---|---|"]
    n = 0
    for b in batches or range(len(BATCHES)):
        results = run_batch(b)
        for k, m in enumerate(BATCHES[b]):
            n += 1
            r = [x for x in results if x.cpu == k + 1 and x.instruction == "vmlaunch"][0]
            pred = "/".join(r.verdict.possible)
            word = verdict_word(r) + (f" ({', '.join(d.rule for d in r.deviations)})" if r.deviations else "")
            rows.append(f"| {n} | {m.name} | {pred} | {r.actual} | {word} | {', '.join(_failing(r.verdict))} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.stdout.write(table())
