"""The WinDbg backend against the pykd stand-in: values, target-read counts, errors, breakpoints."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from windbg_fixtures import fake_target, target_with

from vmxdbg.backends.base import CPUID, EXECUTION, MSR, PHYSICAL, REGISTERS, VMCS, VMX_STATE
from vmxdbg.backends.windbg import WinDbgBackend, decode_descriptor
from vmxdbg.state.collect import collect
from vmxdbg.common.errors import BackendError, NotAvailable

ROOT = Path(__file__).resolve().parent.parent
SWITCH = re.compile(r"^~\d+s$")
# What one processor of the vmentry example costs in a full collect (see docs/windbg.md):
#   18 reg() calls: cr0 cr3 cr4 efl rip dr7, the selectors cs ds es fs gs ss tr ldtr, gdtr gdtl idtr idtl
#    1 loadBytes of the GDT (segment base/limit/attributes are decoded from it)
#   27 rdmsr: 9 always read + 0x480-0x48A (11) + true controls 0x48D-0x490 (BASIC bit 55)
#      + 0x48B (proc-based bit 63) + 0x48C (EPT/VPID) + 0x491 (VM functions)
PER_CPU = 18 + 1 + 27


def test_capabilities_declare_what_a_kernel_debugger_can_and_cannot_do():
    pk, _ = target_with(1)
    caps = WinDbgBackend(pk).capabilities()
    assert {REGISTERS, MSR, PHYSICAL, EXECUTION} <= caps
    assert not caps & {CPUID, VMCS, VMX_STATE}


def test_collect_gives_back_the_state_the_target_holds():
    pk, t = target_with(2)
    t.processors[1].regs["cr4"] = 0x3706F8          # processor 1 differs: CR4.VMXE clear
    t.processors[1].msrs[0x3A] = 0x1
    snap = collect(WinDbgBackend(pk))
    p0, p1 = snap.processors[0], snap.processors[1]
    assert p0.registers["cr4"] == 0x3726F8 and p1.registers["cr4"] == 0x3706F8
    assert p0.msr[0x3A] == 0x20005 and p1.msr[0x3A] == 0x1
    assert p0.registers["rflags"] == 0x40246 and p0.registers["efer"] == 0xD01
    assert p0.state["cpl"] == 0
    cs, tr, gs, ldtr = p0.segments["cs"], p0.segments["tr"], p0.segments["gs"], p0.segments["ldtr"]
    assert (cs.selector, cs.base, cs.limit, cs.attributes) == (0x10, 0, 0, 0x209B)
    assert (tr.base, tr.limit, tr.attributes) == (0xFFFFF8034FA58000, 0x67, 0x8B)   # 16-byte descriptor
    assert gs.base == 0xFFFFF8034D9C6000    # IA32_GS_BASE in IA-32e mode, not the descriptor's 0
    assert p0.segments["ds"].limit == 0xFFFFFFFF    # G=1
    assert ldtr.attributes == 0x10000 and ldtr.base is None   # null selector: unusable, hidden part unknown
    assert p0.tables["gdtr"].limit == 0x57
    assert not p0.cpuid                      # unknown, not zero


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_full_collect_makes_exactly_the_stated_number_of_target_reads(n):
    pk, t = target_with(n)
    backend = WinDbgBackend(pk)
    collect(backend)
    assert backend.reads == len(t.reads) == n * PER_CPU
    per_call = t.reads_by_call()
    assert per_call == {"reg": 18 * n, "rdmsr": 27 * n, "loadBytes": n}
    # never the same thing twice on the same processor
    assert len(set(t.reads)) == len(t.reads)
    # one switch per processor, and no other text command
    assert t.commands == [f"~{c}s" for c in range(n)]


def test_reads_are_cached_until_the_target_runs():
    pk, t = target_with(2)
    backend = WinDbgBackend(pk)
    collect(backend)
    before = len(t.reads)
    collect(backend)                          # same stop: nothing is read again
    assert len(t.reads) == before
    bp = backend.set_breakpoint(0xFFFFF80012340000)
    t.stops = [fake_target.Stop(cpu=1, address=0xFFFFF80012340000)]
    backend.go(timeout=5)
    backend.remove_breakpoint(bp)
    collect(backend)                          # new stop: everything is read again
    assert len(t.reads) == 2 * before         # the rip read that named the stop is reused


def test_stated_count_is_in_the_docs():
    text = (ROOT / "docs" / "windbg.md").read_text(encoding="utf-8")
    assert f"{PER_CPU} reads per processor" in text
    assert f"{4 * PER_CPU}" in text


def test_errors_name_backend_processor_and_address():
    pk, t = target_with(2)
    backend = WinDbgBackend(pk)
    with pytest.raises(NotAvailable, match=r"^windbg .*physical memory 0x7ff000000000\+0x1000"):
        backend.read_physical(0x7FF000000000, 0x1000)
    with pytest.raises(NotAvailable, match=r"^windbg cpu 1 MSR 0x493"):
        backend.read_msr(1, 0x493)
    with pytest.raises(NotAvailable, match=r"^windbg cpu 7 MSR 0x480: no such processor"):
        backend.read_msr(7, 0x480)
    with pytest.raises(NotAvailable, match=r"^windbg cpu 0 CPUID 0x1\.0"):
        backend.cpuid(0, 1)
    with pytest.raises(NotAvailable, match=r"^windbg cpu 1 virtual memory 0x1000\+0x8"):
        backend.read_virtual(1, 0x1000, 8)
    del t.processors[1].regs["dr7"]
    with pytest.raises(NotAvailable, match=r"^windbg cpu 1 register dr7"):
        backend.read_register(1, "dr7")


def test_physical_memory_is_read_in_one_call_per_region():
    pk, t = target_with(1)
    page = bytes(range(256)) * 16
    t.physical.add(0x1A2B4000, page)          # a whole VMCS region
    backend = WinDbgBackend(pk)
    assert backend.read_physical(0x1A2B4000, 0x1000) == page
    assert backend.read_physical(0x1A2B4010, 8) == page[0x10:0x18]      # served from the page read
    assert [r for r in t.reads if r[0] == "loadBytes"] == [("loadBytes", 0, (0x1A2B4000, 0x1000, True))]


def test_only_the_processor_switch_is_text():
    pk, t = target_with(4)
    backend = WinDbgBackend(pk)
    collect(backend)
    backend.step(2)
    assert all(SWITCH.match(c) for c in t.commands)


def test_close_gives_back_the_processor_that_was_current():
    pk, t = target_with(4)
    t.current = 2
    with WinDbgBackend(pk) as backend:
        collect(backend)
        assert t.current == 3
    assert t.current == 2


def test_breakpoint_hit_names_the_processor_and_the_breakpoint():
    pk, t = target_with(4)
    backend = WinDbgBackend(pk)
    a, b = 0xFFFFF80012340000, 0xFFFFF80012340100
    bp_a, bp_b = backend.set_breakpoint(a), backend.set_breakpoint(b)
    t.stops = [fake_target.Stop(cpu=0, address=0x1000), fake_target.Stop(cpu=3, address=b)]
    ev = backend.go(timeout=5)
    assert (ev.kind, ev.cpu, ev.address, ev.breakpoint) == ("breakpoint", 3, b, bp_b)
    assert backend.read_register(3, "rip") == b
    backend.close()
    assert t.breakpoints == {} and bp_a != bp_b


def test_go_breaks_in_after_the_timeout():
    pk, t = target_with(2)
    backend = WinDbgBackend(pk)
    backend.set_breakpoint(0xFFFFF80012340000)
    ev = backend.go(timeout=0.05)               # nothing reaches it: the timer breaks in
    assert ev.kind == "timeout" and t.calls["breakin"] == 1
    backend.close()
    assert t.breakpoints == {}


def test_breakpoints_are_removed_when_a_command_fails():
    pk, t = target_with(2)
    with pytest.raises(RuntimeError):
        with WinDbgBackend(pk) as backend:
            backend.set_breakpoint(0xFFFFF80012340000)
            backend.set_breakpoint(0xFFFFF80012350000)
            assert len(t.breakpoints) == 2
            raise RuntimeError("the command failed half way")
    assert t.breakpoints == {}


def test_breakpoints_are_removed_when_interrupted():
    pk, t = target_with(2)
    t.stops = [fake_target.Stop(cpu=0, address=0, interrupt=True)]   # Ctrl+Break while running
    with pytest.raises(SystemExit, match="CTRL\\+BREAK"):            # what pykd-ext raises
        with WinDbgBackend(pk) as backend:
            backend.set_breakpoint(0xFFFFF80012340000)
            backend.go(timeout=5)
    assert t.breakpoints == {}


def test_breakpoint_objects_are_kept_alive():
    """pykd removes a breakpoint whose Python object is collected; the backend must hold them."""
    import gc
    pk, t = target_with(1)
    backend = WinDbgBackend(pk)
    backend.set_breakpoint(0xFFFFF80012340000)
    gc.collect()
    assert len(t.breakpoints) == 1
    backend.close()


def test_no_physical_breakpoints():
    pk, _ = target_with(1)
    with pytest.raises(NotAvailable, match="physical"):
        WinDbgBackend(pk).set_breakpoint(0x1000, physical=True)


def test_step_runs_one_instruction_on_the_chosen_processor():
    pk, t = target_with(2)

    def advance(target, cpu):
        target.processors[cpu].regs["rip"] = target.processors[cpu].regs.get("rip", 0x1000) + 3
    t.on_step = advance
    t.processors[1].regs["rip"] = 0x5000
    backend = WinDbgBackend(pk)
    ev = backend.step(1)
    assert (ev.kind, ev.cpu, ev.address) == ("step", 1, 0x5003)


def test_descriptor_decoding_matches_the_encoder():
    for base, limit, ar in [(0, 0xFFFFFFFF, 0xC093), (0x12345678, 0xFFFFF, 0x40F3), (0xFFFFF8034FA58000, 0x67, 0x8B)]:
        raw = fake_target.encode_descriptor(base, limit, ar)
        assert decode_descriptor(raw) == (base, limit, ar)


def test_importing_the_backend_does_not_import_pykd():
    code = ("import sys, vmxdbg.backends.windbg as w, vmxdbg.cli; assert 'pykd' not in sys.modules;"
            "b = w.WinDbgBackend()\n"
            "try:\n b.processors()\nexcept w.NotAvailable as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("windbg: pykd cannot be imported here")


def test_a_backend_error_is_a_vmxdbg_error():
    pk, t = target_with(1)
    t.processors[0].regs.pop("gdtr")
    backend = WinDbgBackend(pk)
    with pytest.raises(BackendError, match="register gdtr"):
        backend.read_register(0, "cs.base")
