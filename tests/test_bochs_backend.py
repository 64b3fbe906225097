"""The Bochs backend against a live Bochs booting minihv on 2 processors.

One Bochs is shared by the module (boot ~0.5-1 s); the tests run in file
order and walk the guest forward: cfg_stop (write the knobs), each
processor's planned stop before VMXON (cpu1 has a wrong revision id), the
guest entry, the end.
"""
from __future__ import annotations

import shutil
from typing import Dict, Iterator, Tuple

import pytest

from vmxdbg.state import collect
from vmxdbg.hypervisors.minihv import build as minihv_build  # noqa: E402
from vmxdbg.hypervisors.minihv import knobs  # noqa: E402

from vmxdbg.backends.base import SEGMENT_NAMES, StopEvent  # noqa: E402
from vmxdbg.common.errors import BackendError, NotAvailable  # noqa: E402

pytestmark = [
    pytest.mark.bochs,
    pytest.mark.skipif(not shutil.which("bochs-bin"), reason="bochs-bin not installed (apt-get install bochs bochsbios vgabios)"),
    pytest.mark.skipif(not shutil.which("nasm"), reason="nasm not installed (apt-get install nasm)"),
]

CONFIG = knobs.Config(cores={0: knobs.CoreKnobs(stops=True),
                             1: knobs.CoreKnobs(stops=True, wrong_revision=True)}, expect_cpus=2)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[object, Dict[str, int]]]:
    from vmxdbg.backends.bochs import BochsBackend
    from vmxdbg.backends.bochs_process import BochsMachine
    out = tmp_path_factory.mktemp("minihv")
    image = minihv_build.build(out)            # default block: the knobs are written at cfg_stop
    backend = BochsBackend(BochsMachine(floppy=str(image), cpus=2))
    try:
        yield backend, minihv_build.symbols(out)
    finally:
        backend.close()
        assert backend.close_report["blist_after"] == [] and backend.close_report["errors"] == []
        assert backend.proc.proc.poll() is not None


def full_state(b, cpu: int) -> dict:  # type: ignore[no-untyped-def]
    """Everything the debugger shows of a processor's registers (fresh reads)."""
    b._invalidate()
    names = ["rip", "rflags", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "xcr0", "dr0", "dr1", "dr2", "dr3",
             "dr6", "dr7", "cpl", "gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit"]
    names += ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"] + [f"r{i}" for i in range(8, 16)]
    names += [f"{s}.{p}" for s in SEGMENT_NAMES for p in ("selector", "base", "limit", "attributes")]
    state = b.read_registers(cpu, names)
    assert set(state) == set(names)
    state["vmx"] = b.vmx_state(cpu)
    state["msr-tree"] = b._show(cpu, "MSR")
    return state


def run_to(b, kind: str, address: int, cpu=None, limit: int = 20) -> StopEvent:  # type: ignore[no-untyped-def]
    for _ in range(limit):
        ev = b.go(20)
        assert ev.kind not in ("timeout", "exited", "missed"), ev
        if ev.kind == kind and ev.address == address and (cpu is None or ev.cpu == cpu):
            return ev
    pytest.fail(f"no {kind} stop at 0x{address:x}")


def test_boot_to_cfg_stop_and_write_the_knobs(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    assert b.processors() == [0, 1] and b.describe()["version"] == "2.7"
    ev = b.go(30)
    assert (ev.kind, ev.cpu, ev.address) == ("magic", 0, sym["cfg_stop"] + 3)
    page = knobs.encode(CONFIG)
    b.write_physical(knobs.CONFIG_PHYS, page)
    assert b.read_physical(knobs.CONFIG_PHYS, len(page)) == page


def test_registers_at_cfg_stop(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    r = b.read_registers(0, ["rip", "rsp", "r15", "cr0", "cr4", "efer", "cpl", "cs.selector", "cs.attributes",
                             "ss.attributes", "tr.attributes", "ldtr.attributes", "gdtr.base", "gdtr.limit", "dr7"])
    assert r["rip"] == sym["cfg_stop"] + 3 and r["rsp"] == 0x104000 and r["r15"] == 0x100000
    assert r["cr0"] & 0x80000001 == 0x80000001 and r["efer"] & 0x500 == 0x500 and r["cpl"] == 0
    assert (r["cs.selector"], r["cs.attributes"], r["ss.attributes"]) == (0x8, 0xA09B, 0xC093)
    assert r["gdtr.base"] == sym["gdt"] and r["dr7"] == 0x400
    assert b.current == 0
    with pytest.raises(NotAvailable, match="register xmm0"):
        b.read_register(0, "xmm0")
    with pytest.raises(BackendError, match="no processor 5"):
        b.read_register(5, "rip")


def test_memory(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    vmxon = b.read_virtual(0, sym["at_vmxon"], 9)
    assert vmxon == bytes.fromhex("f3410fc7b730500000")
    assert b.read_physical(sym["at_vmxon"], 9) == vmxon              # identity map
    with pytest.raises(NotAvailable, match="outside RAM"):
        b.read_physical(0xFFFFFFF000, 16)                            # `xp` there would crash Bochs
    with pytest.raises(NotAvailable, match="not mapped"):
        b.read_virtual(0, 0x7F0000000000, 8)
    assert b.read_physical(0, 4) is not None and b.proc.alive


def test_many_writes_go_through_one_sourced_file(session) -> None:  # type: ignore[no-untyped-def]
    b, _ = session
    scratch = 0x3F0000                               # RAM minihv does not use (64 MiB machine)
    old = b.read_physical(scratch, 23)
    data = bytes(range(0x41, 0x41 + 23))             # 5 dwords, a word and a byte per piece
    rt = b.stats["round_trips"]
    b._poke_many([(scratch, data[:11]), (scratch + 11, data[11:])])
    assert b.stats["round_trips"] == rt + 1          # one exchange for every setpmem
    assert b.read_physical(scratch, 23) == data
    b._poke_many([(scratch, old)])
    assert b.read_physical(scratch, 23) == old
    # Bochs' own error line comes back in the answer, and the prompt after it
    said = b.proc.source(["setpmem 0xfffffff000 1 0x0", "setpmem 0x3f0000 1 0x7"])
    assert "could not set memory" in said and b.read_physical(scratch, 1) == b"\x07" and b.proc.alive
    b._poke_many([(scratch, old[:1])])
    with pytest.raises(BackendError, match="empty or holds a line break"):
        b.proc.source(["r", "s\n"])


def test_a_batch_answers_as_its_commands_one_by_one(session) -> None:  # type: ignore[no-untyped-def]
    b, _ = session
    # answers that end in blank lines, an error line, a command that prints nothing, a group
    cmds = ["r", "creg", 'show "cpu1.no_such_param"', "set $cpu = 1", "r", 'show "cpu1.GDTR"',
            "xp /2gx 0x100000", "set $cpu = 0"]
    batch = b.proc.commands(cmds)
    singly = [b.proc.command(c) for c in cmds]
    assert len(batch) == len(cmds)
    assert [x.strip() for x in batch] == [x.strip() for x in singly]
    assert "rip:" in batch[0] and batch[3].strip() == "" and batch[4].startswith("CPU1")
    assert [c for c, _ in b.proc.transcript[-2 * len(cmds):-len(cmds)]] == cmds   # each noted on its own
    b._invalidate()
    b._current = 0


def test_msrs_and_cpuid_by_injection_restore_everything(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    before = full_state(b, 0)
    rip = before["rip"]
    around = b.read_virtual(0, rip - 64, 128)
    stack = b.read_virtual(0, before["rsp"] - 128, 128)
    assert b.read_msr(0, 0x480) == 0x00D810000000002B              # IA32_VMX_BASIC, revision 0x2B
    assert b.read_msr_by_rdmsr(0, 0x10) > 0                        # the TSC: only RDMSR has it
    leaf1 = b.cpuid(0, 1)
    assert leaf1[2] >> 5 & 1 and leaf1[1] >> 24 == 0                # VMX, initial APIC ID 0
    assert b.cpuid(0, 0)[0] >= 0xD
    # values that both the parameter tree and RDMSR give agree
    for index in (0x1B, 0x3A, 0xC0000080, 0x277, 0x174):
        assert b.read_msr_by_rdmsr(0, index) == b.read_msr(0, index), hex(index)
    with pytest.raises(NotAvailable, match="no usable #GP gate"):      # no IDT yet: a #GP would reset
        b.read_msr(0, 0x492)
    assert full_state(b, 0) == before
    assert b.read_virtual(0, rip - 64, 128) == around
    assert b.read_virtual(0, before["rsp"] - 128, 128) == stack
    assert b.stats["injections"] >= 8


def test_an_interrupted_injection_is_undone(session, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    b, _ = session
    before = full_state(b, 0)
    around = b.read_virtual(0, before["rip"] - 16, 48)
    real_step, calls = b._step_raw, []

    def step(cpu: int) -> Dict[str, int]:
        calls.append(cpu)
        if len(calls) == 2:                 # between the INVD and the RDMSR
            raise KeyboardInterrupt
        return real_step(cpu)
    monkeypatch.setattr(b, "_step_raw", step)
    with pytest.raises(KeyboardInterrupt):
        b.read_msr(0, 0x481)
    monkeypatch.undo()
    assert full_state(b, 0) == before and b.read_virtual(0, before["rip"] - 16, 48) == around

    real_read, cut = b.proc._read_some, []

    def read_some(deadline: float) -> bool:    # Ctrl-C while a command waits for its answer
        if not cut:
            cut.append(1)
            raise KeyboardInterrupt
        return real_read(deadline)
    monkeypatch.setattr(b.proc, "_read_some", read_some)
    with pytest.raises(KeyboardInterrupt):
        b.read_msr(0, 0x484)                # not read before (0x482 is: VMX capability MSRs are kept)
    monkeypatch.undo()
    assert b.read_msr(0, 0x484) == b.read_msr_by_rdmsr(0, 0x484) != 0  # the prompt is regained
    assert full_state(b, 0) == before


def test_unaligned_physical_reads_are_the_bytes_there(session) -> None:  # type: ignore[no-untyped-def]
    """A range at any address and of any size is read as whole aligned 8-byte items (`xp /Ngx`,
    less text than bytes) and cut to the bytes asked for."""
    b, _ = session
    base = 0xF0000                                  # the BIOS copy in RAM: bytes that are not all alike
    whole = b.read_physical(base, 64)
    assert len(set(whole)) > 8
    for at, n in ((1, 1), (3, 5), (7, 17), (8, 8), (13, 40), (0, 3)):
        assert b.read_physical(base + at, n) == whole[at:at + n], (at, n)
    assert b.read_physical_many([(base + 5, 3), (base + 17, 9)]) == [whole[5:8], whole[17:26]]
    assert all("gx" in cmd for cmd, _ in b.proc.transcript[-3:])
    assert b.read_physical(base + 5, 0) == b""


def test_step_vmxon_on_each_core(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    b.plan_stops([sym["at_vmxon"]])
    flags = {}
    for _ in range(2):
        ev = b.go(20)
        while not (ev.kind == "magic" and ev.address == sym["at_vmxon"]):
            assert ev.kind == "magic", ev
            ev = b.go(20)
        cpu = ev.cpu
        assert b.vmx_state(cpu)["vmx"] == "off"
        before = full_state(b, cpu)
        stack = b.read_virtual(cpu, before["rsp"] - 128, 160)
        code = b.read_virtual(cpu, before["rip"] - 32, 64)
        with pytest.raises(NotAvailable, match="raised an exception"):   # IDT ready: #GP caught, undone
            b.read_msr_by_rdmsr(cpu, 0x492)
        assert full_state(b, cpu) == before
        assert b.read_virtual(cpu, before["rsp"] - 128, 160) == stack     # the exception frame is gone
        assert b.read_virtual(cpu, before["rip"] - 32, 64) == code
        for index in (0x2FF, 0x250, 0x200, 0xC0000084):                   # MSRs that need the IDT here
            assert b.read_msr_by_rdmsr(cpu, index) == b.read_msr(cpu, index), hex(index)
        assert full_state(b, cpu) == before
        # everything a stop reads by RDMSR/CPUID, in one injected stub, as at the processor's first stop
        saved = (dict(b._leaves), dict(b._constant), set(b._absent))
        b._leaves.clear(), b._constant.clear(), b._absent.clear()
        after_rip = b.read_virtual(cpu, before["rip"], 2048)
        k = b.stats["injections"]
        b.prefetch(cpu, collect.PREFETCH_MSRS, collect.CPUID_LEAVES)
        assert b.stats["injections"] == k + 1
        assert full_state(b, cpu) == before
        assert b.read_virtual(cpu, before["rip"], 2048) == after_rip
        assert b.read_virtual(cpu, before["rsp"] - 128, 160) == stack
        assert b._constant[(cpu, 0x480)] == 0x00D810000000002B and (cpu, 0x48B) in b._constant
        assert (cpu, 0x492) not in b._constant                       # IA32_VMX_PROCBASED_CTLS[49] = 0
        assert (cpu, 0x1D9) in b._absent                              # Bochs 2.7 has no IA32_DEBUGCTL: #GP undone
        assert (1 - cpu, 0x1D9) in b._absent                          # nor has the other processor (one model)
        assert b.cpuid(cpu, 1)[2] >> 5 & 1 and b.read_msr(cpu, 0x48C) == b.read_msr_by_rdmsr(cpu, 0x48C)
        k = b.stats["injections"]
        b.prefetch(cpu, collect.PREFETCH_MSRS, collect.CPUID_LEAVES)    # nothing left to read: no injection
        assert b.stats["injections"] == k
        with pytest.raises(NotAvailable, match="raised #GP"):
            b.read_msr(cpu, 0x1D9)
        b._leaves.update(saved[0]), b._constant.update(saved[1]), b._absent.update(saved[2])
        k = b.stats["injections"]                        # capability MSRs: once per processor
        assert b.read_msr(cpu, 0x480) == b.read_msr(cpu, 0x480) == 0x00D810000000002B
        assert b.stats["injections"] - k <= 1
        st = b.step(cpu)
        assert (st.kind, st.cpu, st.address) == ("step", cpu, sym["at_vmxon"] + 9)
        flags[cpu] = b.read_register(cpu, "rflags") & 0x41
        if cpu == 1:
            assert any("VMXON: not expected (42 != 43)" in x for x in st.log), st.log
    assert flags == {0: 0, 1: 1}                                        # cpu0 ok, cpu1 VMfailInvalid (CF)
    assert b.vmx_state(0) == {"vmx": "root", "vmxon_pointer": 0x100000, "vmcs_pointer": 2**64 - 1, "smm": False}
    assert b.vmx_state(1)["vmx"] == "off"
    # the target ran since cpu0's capability MSRs and CPUID leaves were read: they are not read
    # again; cpu1's are its own, read once; the TSC is read each time
    n = b.stats["injections"]
    assert b.read_msr(0, 0x480) == 0x00D810000000002B and b.cpuid(0, 1)[2] >> 5 & 1
    assert b.stats["injections"] == n
    assert b._constant[(1, 0x480)] == 0x00D810000000002B            # cpu1's own, read at its stop
    b.read_msr(0, 0x10)
    b.read_msr(0, 0x10)
    assert b.stats["injections"] == n + 2
    # the bits CPUID recomputes from the state software sets follow it: OSXSAVE = CR4.OSXSAVE
    assert b.cpuid(0, 1)[2] >> 27 & 1 == b.read_register(0, "cr4") >> 18 & 1
    b._creg(0)["cr4"] ^= 1 << 18                      # as if the guest had toggled CR4.OSXSAVE
    assert b.cpuid(0, 1)[2] >> 27 & 1 == b.read_register(0, "cr4") >> 18 & 1
    assert b.stats["injections"] == n + 2
    b._invalidate()
    assert b.bochs_log[1] and not any("VMXON" in x for x in b.bochs_log.get(0, []))


def test_breakpoint_guest_and_a_missed_stop(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    # write_vmcs runs with no stop on it: reaching the planned at_vmlaunch first is a miss
    b.plan_stops([sym["write_vmcs"], sym["at_vmlaunch"]], cpus=[0])
    bp = b.set_breakpoint(sym["guest_entry"], physical=True)
    assert b.breakpoints() == {bp: (sym["guest_entry"], True)}
    events, seen = [], {}
    for _ in range(8):
        ev = b.go(20)
        events.append(ev)
        if (ev.kind, ev.cpu, ev.address) == ("magic", 0, sym["at_vmlaunch"]):
            # what a stop reads is kept until the target runs (read here, then stale after the entry)
            seen = {"rip": b.read_register(0, "rip"), "launch": b.vmx_state(0)["vmcs_launch_state"],
                    "cs": b.read_register(0, "cs.selector")}
        if ev.kind == "breakpoint":
            break
    kinds = [(e.kind, e.cpu, e.address) for e in events]
    i = kinds.index(("missed", 0, sym["write_vmcs"]))
    assert kinds[i + 1] == ("magic", 0, sym["at_vmlaunch"]) and "debugger miss" in events[i].detail
    assert kinds[-1] == ("breakpoint", 0, sym["guest_entry"]) and events[-1].breakpoint == bp
    assert b.vmx_state(0)["vmx"] == "non-root"
    assert seen["launch"] == "clear" and b.vmx_state(0)["vmcs_launch_state"] == "launched"
    assert seen["rip"] == sym["at_vmlaunch"] and b.read_register(0, "rip") == sym["guest_entry"]
    assert b.read_register(0, "cs.selector") == b._show(0, "CS")["selector"]
    with pytest.raises(NotAvailable, match="VMX non-root"):
        b.read_msr(0, 0x10)
    assert b.read_msr(0, 0x480) == 0x00D810000000002B         # read before, in root operation: kept
    b.remove_breakpoint(bp)
    assert b.bochs_breakpoints() == [] and b.breakpoints() == {}


def test_run_to_the_end_then_time_out(session) -> None:  # type: ignore[no-untyped-def]
    b, sym = session
    b.arm_vmexit_stop(0)
    ev = b.go(20)
    assert ev.kind == "vmexit" and ev.cpu == 0
    b.arm_vmexit_stop(0, False)
    for _ in range(5):
        ev = b.go(1)
        if ev.kind == "timeout":
            break
    assert ev.kind == "timeout"
    assert b.guest_lines[None] == ["done cpus=2"]
    assert b.guest_lines[0][-4:] == ["vmlaunch ok", f"exit reason=0x12 qual=0x0 guest_rip=0x{sym['at_vmcall']:x}",
                                     "vmxoff ok", "done"]
    assert b.guest_lines[1][-2:] == ["vmxon fail CF=1 ZF=0", "done"]


def test_a_step_cut_short_inside_a_batch_is_interrupted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A batch runs from a sourced file, so the command waiting for its prompt is `source bN`,
    # not the step inside it: resync must still stop that step with SIGINT (as it does a
    # lone `s`) rather than wait for a step of 4*10^9 instructions to end.
    import sys
    import time
    from pathlib import Path
    from vmxdbg.backends.bochs import BochsBackend
    from vmxdbg.backends.bochs_process import BochsMachine
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_bochs_cleanup import wait_running
    image = minihv_build.build(tmp_path)
    b = BochsBackend(BochsMachine(floppy=str(image), cpus=1, magic_break=True))
    try:
        assert b.go(timeout=60).kind == "magic"
        b.write_physical(b.translate(0, b.read_register(0, "rip")), b"\xeb\xfe")   # jmp $: the step never ends
        proc = b.proc
        sent = proc.command

        def send_then_cut(cmd, timeout=None):  # type: ignore[no-untyped-def]
            proc._send(cmd)
            proc.pending = cmd
            wait_running(proc.pid)                  # the step has started
            raise KeyboardInterrupt                 # as if Ctrl-C came while waiting
        proc.command = send_then_cut                # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            proc.commands(["s 0 4000000000", "r"])
        proc.command = sent                         # type: ignore[method-assign]
        t = time.monotonic()
        proc.resync(timeout=30)
        assert time.monotonic() - t < 10 and proc.pending is None and proc.alive
        assert "rip:" in proc.command("r")          # the debugger answers again
    finally:
        b.close()
